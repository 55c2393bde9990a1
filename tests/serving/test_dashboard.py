"""A release's dashboard and the releases page (in process, real replicas): who may open
which, what the pages hold; the monitoring series behind the charts."""

from __future__ import annotations

import re

import pytest
import requests

from loophub import errors
from tests.serving.test_releases import digit_nets, register, wait_for  # noqa: F401 (fixture)
from tests.test_frontdoor import page

pytestmark = pytest.mark.serving
SMALL = {"cpu": 0.25, "mem": "768M"}


def test_the_dashboard_is_for_the_owner_and_admins(api, digit_nets):  # noqa: F811
    images, net = digit_nets
    ann = api.client("ann")
    register(ann, "digits", net)
    for name, access in (("shop", "hub"), ("quiet", "public-token")):
        ann.request("POST", "releases", json={"name": name, "model": "digits@latest",
                                              "per_replica": SMALL, "access": access})
    view = wait_for(ann, "shop", lambda v: v["status"] == "serving")
    assert view["dashboard"].endswith("/services/loophub/releases/shop/dashboard")
    assert view["app"].endswith("/services/apps/shop")
    [replica] = view["replica_list"]
    for _ in range(5):
        requests.post(f"{replica['url']}/predict", json={"instances": [
            {"pixels": images[0].tolist()}]}, timeout=30).raise_for_status()

    mine = page(api, "releases/shop/dashboard", "ann")
    assert mine.status_code == 200 and 'id="traffic-chart"' in mine.text
    assert "static/pages.js" in mine.text and "shop" in mine.text
    assert page(api, "releases/shop/dashboard", "root").status_code == 200  # an admin
    assert page(api, "releases/shop/dashboard", "ben").status_code == 403   # may call it
    assert page(api, "releases/quiet/dashboard", "ben").status_code == 404  # cannot see it
    assert page(api, "static/pages.js", "ben").text.startswith("// What the service's pages")

    listed = page(api, "releases", "ann").text
    rows = dict(re.findall(r'<tr data-release="([^"]+)"[^>]*>(.*?)</tr>', listed, re.S))
    assert set(rows) == {"shop", "quiet"} and "dashboard" in rows["shop"]
    others = dict(re.findall(r'<tr data-release="([^"]+)"[^>]*>(.*?)</tr>',
                             page(api, "releases", "ben").text, re.S))
    assert set(others) == {"shop"} and "dashboard" not in others["shop"]
    assert 'href="/services/apps/shop"' in others["shop"]  # its app, for whoever may call it

    report = ann.request("GET", "releases/shop/monitoring", params={"window": 600,
                                                                    "bucket": 30})
    assert report["series"]["bucket_s"] == 30 and len(report["series"]["t"]) == 20
    with pytest.raises(errors.InvalidInput, match="bucket"):
        ann.request("GET", "releases/shop/monitoring", params={"window": 86400, "bucket": 1})
