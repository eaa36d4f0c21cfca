# Test harness only (put on PYTHONPATH by tests/test_wml.py): the real WML clients accept a host
# other than IBM's only when told to. Production code never sets these.
# - ibm-watson-machine-learning (deprecated): `_internal` lets any URL be a cloud region.
# - ibm-watsonx-ai: a URL is IBM Cloud when its host is in PLATFORM_URLS_MAP, and Cloud Pak for
#   Data otherwise. The stand-in answers on 127.0.0.1 as IBM Cloud and on localhost as a Cloud
#   Pak cluster, so both sign-ins run against the same server.
import types

try:
    from ibm_watson_machine_learning import APIClient as Deprecated

    Deprecated._internal = True
except ImportError:
    pass

try:
    from ibm_watsonx_ai import APIClient as Maintained

    Maintained._internal = True  # the platform URL of a cloud host is WML_URL itself
    Maintained.PLATFORM_URLS_MAP = types.MappingProxyType(
        {**Maintained.PLATFORM_URLS_MAP, "https://127.0.0.1": "https://127.0.0.1"}
    )
except ImportError:
    pass
