"""A study's certificates for mutual TLS between a run and its `tff-resume worker`s.

`tff-resume certs --out DIR --workers HOST[,HOST...]` writes into DIR (created 0700):

    ca.pem, ca.key                 the study's certificate authority (it signs every other certificate)
    runner.pem, runner.key         the runner's client certificate (extended key usage: client auth)
    worker-HOST.pem, worker-HOST.key
                                   a server certificate per worker host, HOST as its subject
                                   alternative name (a DNS name, or an IP address)

Keys are ECDSA P-256, written 0600 and never overwritten: run it again with more hosts and the CA and
the certificates already there are kept (reused), only the missing ones are made. A worker serves with
the CA and its own pair; a run connects with the CA and the runner pair (`runtime.tls_dir`: DIR, or a
copy holding `ca.pem`, `runner.pem` and `runner.key`). A key readable by anyone but its owner is
refused, as is a certificate that has expired, is not yet valid or was not signed by the CA.
"""

import dataclasses
import datetime
import ipaddress
import os
import stat
from typing import Callable, Sequence

from cryptography import exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

CA = "ca"
RUNNER = "runner"
DEFAULT_DAYS = 365


class CertificateError(ValueError):
  """A TLS folder, key or certificate that cannot be used; the message says what to do."""


def worker_name(host: str) -> str:
  """The file stem of `host`'s server certificate (`worker-HOST`)."""
  return f"worker-{host}"


def _paths(folder: str, stem: str) -> tuple[str, str]:
  return os.path.join(folder, f"{stem}.pem"), os.path.join(folder, f"{stem}.key")


def _subject_alternative_name(host: str) -> x509.GeneralName:
  try:
    return x509.IPAddress(ipaddress.ip_address(host))
  except ValueError:
    return x509.DNSName(host)


def _check_host(host: str) -> None:
  if not host or "/" in host or host.startswith(".") or any(c.isspace() for c in host):
    raise CertificateError(f"--workers: {host!r} is not a host name or IP address.")


def _write_new(path: str, data: bytes, mode: int) -> None:
  """Writes `data` to a new file at `path` with `mode` (never replacing one), durably."""
  descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
  with os.fdopen(descriptor, "wb") as new_file:
    new_file.write(data)
    new_file.flush()
    os.fsync(new_file.fileno())


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
           issuer_key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime,
           not_after: datetime.datetime, host: str | None = None) -> x509.Certificate:
  name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tff_resume study"),
                    x509.NameAttribute(NameOID.COMMON_NAME, subject)])
  builder = (x509.CertificateBuilder()
             .subject_name(name)
             .issuer_name(issuer.subject if issuer else name)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before)
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                            critical=True))
  if issuer is None:
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False), critical=True)
  else:
    usage = ExtendedKeyUsageOID.SERVER_AUTH if host else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
  if host:
    builder = builder.add_extension(
        x509.SubjectAlternativeName([_subject_alternative_name(host)]), critical=False)
  return builder.sign(issuer_key, hashes.SHA256())


def _load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
  check_private(path)
  with open(path, "rb") as key_file:
    return serialization.load_pem_private_key(key_file.read(), password=None)


def _load_certificate(path: str) -> x509.Certificate:
  try:
    with open(path, "rb") as certificate_file:
      return x509.load_pem_x509_certificate(certificate_file.read())
  except FileNotFoundError:
    raise CertificateError(f"{path} does not exist; make the study's certificates with "
                           "`tff-resume certs --out DIR --workers HOST,...`.") from None
  except ValueError as error:
    raise CertificateError(f"{path} is not a PEM certificate ({error}).") from None


@dataclasses.dataclass(frozen=True)
class Made:
  """One certificate of the folder: its file, whom it names, and when it expires."""
  path: str
  subject: str
  not_valid_after: datetime.datetime
  new: bool


def make_certificates(folder: str, hosts: Sequence[str], days: int = DEFAULT_DAYS,
                      now: datetime.datetime | None = None) -> list[Made]:
  """Makes, in `folder`, the CA, the runner's pair and one server pair per host that are missing.

  Args:
    folder: where the files go; created with mode 0700 when missing.
    hosts: the worker hosts, as runs name them in `runtime.workers`.
    days: how long new certificates are valid, from `now`.
    now: the start of their validity (default: now; tests make expired certificates with it).

  Returns:
    Every certificate asked for, new or kept, CA first.

  Raises:
    CertificateError: a host that is no name, days < 1, a folder others can read, or a key with
      no certificate (or the other way round).
  """
  for host in hosts:
    _check_host(host)
  if days < 1:
    raise CertificateError(f"--days must be at least 1, got {days}.")
  os.makedirs(folder, mode=0o700, exist_ok=True)
  check_private(folder)
  now = now or datetime.datetime.now(datetime.timezone.utc)
  not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
  made = []

  def ensure(stem: str, host: str | None, sign: Callable | None) -> x509.Certificate:
    certificate_path, key_path = _paths(folder, stem)
    present = [os.path.exists(path) for path in (certificate_path, key_path)]
    if all(present):
      certificate = _load_certificate(certificate_path)
      _load_private_key(key_path)
      made.append(Made(certificate_path, stem, certificate.not_valid_after_utc, False))
      return certificate
    if any(present):
      raise CertificateError(f"{folder} holds one of {stem}.pem and {stem}.key but not the other; "
                             "move the one left aside and run again.")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = sign(stem, key, host)
    _write_new(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_new(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    made.append(Made(certificate_path, stem, certificate.not_valid_after_utc, True))
    return certificate

  ca_certificate = ensure(CA, None, lambda stem, key, host: _issue(
      "tff_resume study CA", key, None, key, not_before, not_after))
  ca_key = _load_private_key(_paths(folder, CA)[1])

  def signed(stem, key, host):
    return _issue(host or stem, key, ca_certificate, ca_key, not_before,
                  min(not_after, ca_certificate.not_valid_after_utc), host)

  ensure(RUNNER, None, signed)
  for host in hosts:
    ensure(worker_name(host), host, signed)
  return made


def check_private(path: str) -> None:
  """Raises CertificateError when `path` (a key or the TLS folder) is readable by group or others."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise CertificateError(f"{path} does not exist; make the study's certificates with "
                           "`tff-resume certs --out DIR --workers HOST,...`.") from None
  if mode & (stat.S_IRWXG | stat.S_IRWXO):
    raise CertificateError(f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): "
                           f"run `chmod {'700' if stat.S_ISDIR(mode) else '600'} {path}`.")


def check_pair(folder: str, stem: str, now: datetime.datetime | None = None) -> tuple[str, str]:
  """Checks `folder`'s `stem` pair against its CA; returns (certificate path, key path).

  Raises:
    CertificateError: a file missing, a key open to others or not the certificate's, a
      certificate expired, not yet valid or not signed by `ca.pem`.
  """
  certificate_path, key_path = _paths(folder, stem)
  ca_certificate = _load_certificate(_paths(folder, CA)[0])
  certificate = _load_certificate(certificate_path)
  key = _load_private_key(key_path)
  now = now or datetime.datetime.now(datetime.timezone.utc)
  for checked, path in ((ca_certificate, _paths(folder, CA)[0]), (certificate, certificate_path)):
    if now > checked.not_valid_after_utc:
      raise CertificateError(f"{path} expired on {checked.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                             "make new certificates with `tff-resume certs` in a new folder.")
    if now < checked.not_valid_before_utc:
      raise CertificateError(f"{path} is not valid before "
                             f"{checked.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clock.")
  try:
    certificate.verify_directly_issued_by(ca_certificate)
  except (ValueError, TypeError, exceptions.InvalidSignature) as error:
    raise CertificateError(f"{certificate_path} was not signed by {_paths(folder, CA)[0]} "
                           f"({type(error).__name__}): use the files of one `tff-resume certs` "
                           "folder.") from None
  if key.public_key().public_numbers() != certificate.public_key().public_numbers():
    raise CertificateError(f"{key_path} is not the key of {certificate_path}.")
  return certificate_path, key_path


def read(path: str) -> bytes:
  """The bytes of the PEM file at `path`."""
  with open(path, "rb") as pem_file:
    return pem_file.read()


def ca_path(folder: str) -> str:
  """The path of the study's CA certificate (`ca.pem`) in `folder`."""
  return _paths(folder, CA)[0]
