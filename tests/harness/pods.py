"""The pods of the test suite are tether's test bed (``tether.testbed``): the same module
serves ``tether demo``, ``make bench`` and the tests.  This name stays for the tests."""

import sys

from tether import testbed

sys.modules[__name__] = testbed
