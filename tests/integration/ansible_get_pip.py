"""Stands in for the pip bootstrap script ansible-test fetches from its own file server.

The test machines reach the package index and nothing else, so pip comes from the venv's own
ensurepip and is then brought to the version ansible-test asked for, from the package index.
ansible-test runs this file with get-pip's arguments; its get-pip-only options are dropped.
"""

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
wanted = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *wanted])
