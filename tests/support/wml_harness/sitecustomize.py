# Test harness only (put on PYTHONPATH by tests/test_wml.py): the real WML client accepts a
# host other than IBM's only with this class attribute. Production code never sets it.
try:
    from ibm_watson_machine_learning import APIClient

    APIClient._internal = True
except ImportError:  # not the WML environment
    pass
