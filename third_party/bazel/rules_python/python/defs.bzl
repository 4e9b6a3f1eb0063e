"""Pass-through stand-in for rules_python: the native Python rules (Python 3 from PATH)."""

py_binary = native.py_binary
py_library = native.py_library
py_test = native.py_test
