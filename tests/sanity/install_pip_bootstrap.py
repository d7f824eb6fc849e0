"""Place pip_bootstrap.py where ansible-test looks for its cached get-pip script.

The cache name follows the pip version ansible-test pins (get_pip_24_2.py for pip 24.2), read
from the installed ansible_test package so that an ansible-core upgrade cannot silently miss it.
"""
import os
import re
import shutil
import sys

import ansible_test

source = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
with open(source, encoding="utf-8") as handle:
    match = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", handle.read())
if not match:
    sys.exit("cannot find the pip version ansible-test pins in %s; update tests/sanity/install_pip_bootstrap.py" % source)
cache = os.path.expanduser("~/.ansible/test/cache")
os.makedirs(cache, exist_ok=True)
target = os.path.join(cache, "get_pip_%s.py" % match.group(1).replace(".", "_"))
shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip_bootstrap.py"), target)
print("pip bootstrap for ansible-test: %s" % target)
