"""Tests for tff_resume.releases.units."""

from absl.testing import absltest

from tff_resume.releases import units


class FormatBitsTest(absltest.TestCase):

  def test_binary_prefixes(self):
    self.assertEqual([units.format_bits(b) for b in (900, 3 * 2 ** 19, 5 * 2 ** 30 // 4)],
                     ["900 bit", "1.50 Mibit", "1.25 Gibit"])


if __name__ == "__main__":
  absltest.main()
