"""MkDocs hook: every public name of tff_resume has a docstring, and the reference covers every module.

Read statically with griffe (as mkdocstrings reads it). Public means not starting with `_`: each
module, and in it each function and class defined there, and each method of such a class (overrides
of TFF's base classes included: the reference shows what this class does). A missing docstring, or a
module that no page of `docs/reference/` renders (`::: tff_resume.x.y`), is a warning, which
`mkdocs build --strict` turns into a failed build.
"""

import logging
import os
import re

import griffe

PACKAGE = "tff_resume"
REFERENCE_DIR = os.path.join("docs", "reference")

log = logging.getLogger("mkdocs.hooks.docstring_check")


def _public_objects(module: griffe.Module):
  """Yields (object, kind) for the module, its public functions and classes and their methods."""
  yield module, "module"
  for name, member in module.members.items():
    if member.is_alias:
      continue
    if member.is_module:
      yield from _public_objects(member)
    elif not name.startswith("_") and (member.is_function or member.is_class):
      yield member, member.kind.value
      if member.is_class:
        for method_name, method in member.members.items():
          if not method.is_alias and not method_name.startswith("_") and method.is_function:
            yield method, "method"


def undocumented(package: griffe.Module) -> list[tuple[str, str, str]]:
  """(dotted name, kind, file:line) of every public object without a docstring."""
  missing = []
  for obj, kind in _public_objects(package):
    if not obj.docstring:
      missing.append((obj.path, kind, f"{obj.relative_filepath}:{obj.lineno or 1}"))
  return missing


def modules(package: griffe.Module) -> list[str]:
  """Every module of the package (the package itself included), dotted."""
  found = [package.path]
  for member in package.members.values():
    if not member.is_alias and member.is_module:
      found += modules(member)
  return found


def referenced_modules() -> set[str]:
  """The objects that the reference pages render with `::: name`."""
  names = set()
  for page in os.listdir(REFERENCE_DIR):
    with open(os.path.join(REFERENCE_DIR, page)) as page_file:
      names.update(re.findall(r"^::: *([\w.]+)", page_file.read(), flags=re.MULTILINE))
  return names


def check() -> list[str]:
  """Every problem found, one line each (empty when the reference is complete)."""
  package = griffe.load(PACKAGE, search_paths=["."], allow_inspection=False)
  problems = []
  for name, kind, where in undocumented(package):
    problems.append(f"{where}: public {kind} {name} has no docstring.")
  referenced = referenced_modules()
  for name in modules(package):
    if name not in referenced:
      problems.append(f"module {name} is in no page of {REFERENCE_DIR}/: add `::: {name}`.")
  return problems


def on_pre_build(config, **kwargs):
  """Warns (a failed strict build) for each undocumented public name and unreferenced module."""
  del config, kwargs  # Unused.
  for problem in check():
    log.warning(problem)

