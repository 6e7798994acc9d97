"""Drives the real analytics-python SDK against ess: track, identify, page (one request each)
and a gzip batch of five tracks. The device clock is skewed by ESS_SKEW_SECONDS (default +3600)
in the SDK's own modules, the way a wrong clock on a client would be. Prints one JSON line per
HTTP request: {"status": ..., "body": <what was posted>}. Exits 1 if the SDK reported an error.

Usage: send_python.py URL WRITE_KEY RUN_ID
"""
import datetime as dt
import gzip
import json
import os
import sys

import segment.analytics.client as client_module
import segment.analytics.request as request_module
from segment.analytics import Client

url, write_key, run = sys.argv[1], sys.argv[2], sys.argv[3]
skew = dt.timedelta(seconds=float(os.environ.get("ESS_SKEW_SECONDS", "3600")))


class SkewedClock(dt.datetime):
    """datetime whose now() is the skewed device clock."""

    @classmethod
    def now(cls, tz=None):
        real = dt.datetime.now(tz) + skew
        return cls.fromtimestamp(real.timestamp(), real.tzinfo)


client_module.datetime = SkewedClock
request_module.datetime = SkewedClock

sent = []
real_post = request_module._session.post


def recording_post(url, **kwargs):
    response = real_post(url, **kwargs)
    data = kwargs["data"]
    if kwargs["headers"].get("Content-Encoding") == "gzip":
        data = gzip.decompress(data)
    sent.append({"status": response.status_code, "body": json.loads(data)})
    return response


request_module._session.post = recording_post

errors = []


def on_error(error, batch):
    errors.append(str(error))


one_by_one = Client(write_key, host=url, sync_mode=True, max_retries=0, on_error=on_error)
one_by_one.track(f"user-{run}", "Order Completed", {"total": 42.5, "currency": "EUR", "run": run},
                 context={"ip": "198.51.100.7"})
one_by_one.identify(f"user-{run}", {"email": f"{run}@example.com", "plan": "pro"})
one_by_one.page(anonymous_id=f"anon-{run}", category="Docs", name="Install",
                properties={"path": "/docs/install"})

batched = Client(write_key, host=url, gzip=True, upload_size=100, upload_interval=2.0,
                 max_retries=0, on_error=on_error)
two_days_ago = SkewedClock.now(dt.timezone.utc) - dt.timedelta(days=2)
for i in range(5):
    batched.track(anonymous_id=f"anon-{run}", event=f"Batch Item {i}", properties={"i": i},
                  timestamp=two_days_ago if i == 0 else None)
batched.flush()
batched.join()

for request in sent:
    print(json.dumps(request))
if errors:
    print("SDK errors: " + "; ".join(errors), file=sys.stderr)
    sys.exit(1)
