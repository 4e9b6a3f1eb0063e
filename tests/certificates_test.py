"""`tff-resume certs` and the checks on a TLS folder: the real command in a subprocess, the files it
writes (modes, names, signatures), a second run that keeps every byte, and the refusals (a key
others can read, an expired or foreign certificate, a worker without --tls_dir or --insecure)."""

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from cryptography import x509

from tff_resume.runtime import certificates

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, PYTHONPATH=_REPO_ROOT)


def _cli(*arguments):
  return subprocess.run([sys.executable, "-m", "tff_resume.cli", *arguments], cwd=_REPO_ROOT,
                        env=_ENV, capture_output=True, text=True, timeout=60, check=False)


def _digests(folder):
  digests = {}
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as data:
      digests[name] = hashlib.sha256(data.read()).hexdigest()
  return digests


class CertsCommandTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root)
    self.folder = os.path.join(self.root, "tls")

  def test_makes_a_ca_a_runner_and_a_worker_pair_per_host_and_never_overwrites(self):
    result = _cli("certs", "--out", self.folder, "--workers", "node-1.cluster,198.18.0.2",
                  "--days", "30")
    self.assertEqual(result.returncode, 0, result.stderr)
    stems = ["ca", "runner", "worker-node-1.cluster", "worker-198.18.0.2"]
    self.assertEqual([line.split()[:2] for line in result.stdout.splitlines()[:4]],
                     [["made", os.path.join(self.folder, f"{stem}.pem")] for stem in stems])
    self.assertRegex(result.stdout.splitlines()[0], r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC$")
    self.assertEqual(os.stat(self.folder).st_mode & 0o777, 0o700)
    self.assertEqual({name: os.stat(os.path.join(self.folder, name)).st_mode & 0o777
                      for name in os.listdir(self.folder)},
                     {**{f"{stem}.key": 0o600 for stem in stems},
                      **{f"{stem}.pem": 0o644 for stem in stems}})
    with open(os.path.join(self.folder, "worker-198.18.0.2.pem"), "rb") as pem:
      worker = x509.load_pem_x509_certificate(pem.read())
    names = worker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    self.assertEqual([str(address) for address in names.get_values_for_type(x509.IPAddress)],
                     ["198.18.0.2"])
    lifetime = worker.not_valid_after_utc - worker.not_valid_before_utc
    self.assertEqual(lifetime, datetime.timedelta(days=30, minutes=5))
    for stem in stems[1:]:
      certificates.check_pair(self.folder, stem)  # Signed by the CA, key matching.

    before = _digests(self.folder)
    again = _cli("certs", "--out", self.folder, "--workers", "node-1.cluster,node-2.cluster")
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertEqual([line.split()[0] for line in again.stdout.splitlines()[:4]],
                     ["kept", "kept", "kept", "made"])
    after = _digests(self.folder)
    self.assertEqual({name: after[name] for name in before}, before)
    self.assertEqual(sorted(set(after) - set(before)),
                     ["worker-node-2.cluster.key", "worker-node-2.cluster.pem"])

  def test_refuses_keys_others_can_read_and_certificates_of_another_ca_or_expired(self):
    certificates.make_certificates(self.folder, ["node"])
    key = os.path.join(self.folder, "runner.key")
    os.chmod(key, 0o640)
    with self.assertRaisesRegex(certificates.CertificateError,
                                f"^{key} is open to other users \\(mode 0640\\): run `chmod 600 "):
      certificates.check_pair(self.folder, "runner")
    os.chmod(key, 0o600)
    other = os.path.join(self.root, "other")
    certificates.make_certificates(other, ["node"])
    shutil.copy2(os.path.join(other, "runner.pem"), self.folder)
    shutil.copy2(os.path.join(other, "runner.key"), self.folder)
    with self.assertRaisesRegex(certificates.CertificateError, "runner.pem was not signed by "):
      certificates.check_pair(self.folder, "runner")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    with self.assertRaisesRegex(certificates.CertificateError, "ca.pem expired on "):
      certificates.check_pair(self.folder, "worker-node", now=later)
    result = _cli("certs", "--out", self.folder, "--workers", "bad host")
    self.assertEqual((result.returncode, result.stderr), (
        2, "tff-resume certs: error: --workers: 'bad host' is not a host name or IP address.\n"))

  def test_a_worker_needs_tls_or_insecure_and_refuses_a_foreign_pair(self):
    result = _cli("worker", "--port", "8000")
    self.assertEqual(result.returncode, 2)
    self.assertStartsWith(result.stderr, "tff-resume worker: error: give --tls_dir DIR ")
    certificates.make_certificates(self.folder, ["node"])
    result = _cli("worker", "--port", "8000", "--tls_dir", self.folder, "--host", "elsewhere")
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr, f"tff-resume worker: error: {self.folder}/worker-elsewhere.pem "
                     "does not exist; make the study's certificates with `tff-resume certs --out "
                     "DIR --workers HOST,...`.\n")


if __name__ == "__main__":
  absltest.main()
