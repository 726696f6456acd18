"""Exit 0 when the Python running this is externally managed (PEP 668: pip refuses to
install into it, as Debian 12's python3 does) and is not a virtual environment."""

import os
import sys
import sysconfig

marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
