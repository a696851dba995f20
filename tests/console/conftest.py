import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tell a browser fixture whether its test failed (it then keeps a screenshot)."""
    outcome = yield
    if outcome.get_result().when == "call":
        item.failed = outcome.get_result().failed
