"""MkDocs hook: the Configuration page's field tables, generated from configs/*.py and their comments.

The baseline, `configs/emnist_fedavg.py`, assigns every field once (`config.section.field = value`);
the comment on that line, or the comment lines right above it, is what the field means. The other
config files and the presets in `configs/presets.py` assign a few fields again: their values are
listed beside the baseline's. Read statically (ast and tokenize), so the docs need no TensorFlow and no
ml_collections. A field without a comment, or a variant setting a field the baseline lacks, is a
warning, which `mkdocs build --strict` turns into a failed build.
"""

import ast
import dataclasses
import io
import logging
import os
import tokenize

CONFIGS_DIR = "configs"
BASELINE = "emnist_fedavg.py"
PRESETS = "presets.py"
PAGE = "configuration.md"
MARKER = "<!-- configuration-fields -->"

log = logging.getLogger("mkdocs.hooks.configuration_page")


@dataclasses.dataclass
class Field:
  """One field of the baseline config: its dotted name, default (as written) and meaning."""
  name: str
  default: str
  meaning: str
  line: int
  variants: dict[str, str] = dataclasses.field(default_factory=dict)


def _dotted_target(node: ast.AST) -> str | None:
  """`config.a.b` as "a.b"; None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == "config" and parts:
    return ".".join(reversed(parts))
  return None


def _is_section(value: ast.AST) -> bool:
  return isinstance(value, ast.Call) and getattr(value.func, "attr", None) == "ConfigDict"


def _assignments(source: str):
  """Yields (dotted field, value node, first line, last line) of every `config.x... = value`."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
      field = _dotted_target(node.targets[0])
      if field is not None:
        yield field, node.value, node.lineno, node.end_lineno


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """Line number -> (comment text, whether the comment is the whole line)."""
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      whole_line = not token.line[:token.start[1]].strip()
      comments[token.start[0]] = (token.string.lstrip("#").strip(), whole_line)
  return comments


def _meaning(comments: dict[int, tuple[str, bool]], first_line: int, last_line: int) -> str:
  """The comment lines right above the statement, then the comment at its end, as one text."""
  above = []
  line = first_line - 1
  while line in comments and comments[line][1]:
    above.insert(0, comments[line][0])
    line -= 1
  trailing = [comments[line][0] for line in range(first_line, last_line + 1)
              if line in comments and not comments[line][1]]
  return " ".join(above + trailing).strip()


def _read(name: str) -> str:
  with open(os.path.join(CONFIGS_DIR, name)) as config_file:
    return config_file.read()


def baseline_fields() -> tuple[list[Field], dict[str, str]]:
  """The baseline's fields in file order, and each section's comment ("" where it has none)."""
  source = _read(BASELINE)
  comments = _comments(source)
  fields, sections = [], {}
  for name, value, first_line, last_line in sorted(_assignments(source), key=lambda a: a[2]):
    meaning = _meaning(comments, first_line, last_line)
    if _is_section(value):
      sections[name] = meaning
    else:
      fields.append(Field(name, ast.get_source_segment(source, value), meaning, first_line))
  return fields, sections


def variant_values() -> dict[str, dict[str, str]]:
  """Column name -> {field: value as written} for every other config file and every preset."""
  variants = {}
  for name in sorted(os.listdir(CONFIGS_DIR)):
    if not name.endswith(".py") or name in (BASELINE, PRESETS, "__init__.py"):
      continue
    source = _read(name)
    variants[f"`{name}`"] = {field: ast.get_source_segment(source, value)
                             for field, value, _, _ in _assignments(source)}
  source = _read(PRESETS)
  for function in ast.parse(source).body:
    if isinstance(function, ast.FunctionDef) and function.name.startswith("_"):
      segment = ast.get_source_segment(source, function)
      variants[f"`:{function.name[1:]}` preset"] = {
          field: ast.get_source_segment(segment, value)
          for field, value, _, _ in _assignments(segment)}
  return variants


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def field_tables() -> str:
  """The Markdown that replaces the page's marker; logs a warning for each undocumented field."""
  fields, sections = baseline_fields()
  by_name = {field.name: field for field in fields}
  for field in fields:
    if not field.meaning:
      log.warning("%s:%d: config.%s has no comment saying what it means; add one on its line or "
                  "right above it (the Configuration page is generated from them).",
                  os.path.join(CONFIGS_DIR, BASELINE), field.line, field.name)
  for column, values in variant_values().items():
    for name, value in values.items():
      if name in by_name:
        by_name[name].variants[column] = value
      elif name not in sections:
        log.warning("%s sets config.%s, which %s does not have.", column, name, BASELINE)
  lines = []
  for section, description in sections.items():
    if "." in section:
      continue  # A subsection's fields are listed in its section's table.
    lines += ["", f"### `{section}`", ""]
    if description:
      lines += [description, ""]
    lines += ["| field | default | meaning |", "| --- | --- | --- |"]
    for field in fields:
      if field.name.split(".")[0] != section:
        continue
      default = f"`{_cell(field.default)}`" + "".join(
          f"<br>{column}: `{_cell(value)}`" for column, value in field.variants.items())
      lines.append(f"| `{field.name}` | {default} | {_cell(field.meaning)} |")
  return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, **kwargs):
  """Puts the generated field tables where the Configuration page has its marker."""
  del kwargs  # Unused.
  if page.file.src_uri != PAGE:
    return markdown
  if MARKER not in markdown:
    log.warning("%s lacks the line %s where the generated field tables go.", PAGE, MARKER)
    return markdown
  return markdown.replace(MARKER, field_tables())
