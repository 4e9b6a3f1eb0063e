"""Tests for tff_resume.data.emnist: TFF's loader offline, failing fast when the file is missing."""

import os
import re
import sqlite3
import time

from absl.testing import absltest

from tff_resume.data import emnist


class LoadEmnistTest(absltest.TestCase):

  def test_missing_file_fails_in_seconds_naming_path_and_remedies(self):
    cache_dir = self.create_tempdir().full_path
    started = time.monotonic()
    with self.assertRaises(emnist.DataNotFoundError) as raised:
      emnist.load_emnist(only_digits=True, cache_dir=cache_dir)
    self.assertLess(time.monotonic() - started, 5.0)
    message = str(raised.exception)
    self.assertIn(os.path.join(cache_dir, "emnist_all.sqlite"), message)
    self.assertIn(f"tff-resume data import-leaf --src LEAF_DIR --out {cache_dir}", message)
    self.assertIn("data.source=synthetic", message)
    self.assertEqual(os.listdir(cache_dir), [])

  def test_a_file_that_is_not_tffs_emnist_database_is_refused_naming_it(self):
    for content, message in ((b"not a database at all", "it is not an SQLite database"),
                             (None, "it lacks the table(s) client_metadata, examples")):
      with self.subTest(message):
        cache_dir = self.create_tempdir().full_path
        path = os.path.join(cache_dir, "emnist_all.sqlite")
        if content is None:
          connection = sqlite3.connect(path)
          connection.execute("CREATE TABLE other (x INTEGER)")
          connection.commit()
          connection.close()
        else:
          with open(path, "wb") as database:
            database.write(content)
        with self.assertRaisesRegex(emnist.NotEmnistError,
                                    f"^{path} is not federated EMNIST: {re.escape(message)}"):
          emnist.load_emnist(True, cache_dir)

  def test_default_cache_dir_is_tffs(self):
    self.assertEqual(emnist.emnist_database_path(),
                     os.path.join(os.path.expanduser("~"), ".tff", "emnist_all.sqlite"))


if __name__ == "__main__":
  absltest.main()
