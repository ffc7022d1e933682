"""Run at start-up by the box processes the tests start (fixtures_box.BoxProcess puts this
folder and tests/ on PYTHONPATH): blockbuster watches their event loop as it does the test
process's. A blocking call is logged as a BlockingError, which BoxProcess.stop() reports."""

import blockbuster_rules

blockbuster_rules.start()
