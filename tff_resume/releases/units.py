"""Bits in human units (binary prefixes), without importing TensorFlow."""

MEBIBIT = 2 ** 20
GIBIBIT = 2 ** 30


def format_bits(bits: int) -> str:
  """Returns bits in human units: '3.20 Gibit', '512.00 Mibit', '900 bit'."""
  if bits >= GIBIBIT:
    return f"{bits / GIBIBIT:.2f} Gibit"
  if bits >= MEBIBIT:
    return f"{bits / MEBIBIT:.2f} Mibit"
  return f"{bits} bit"
