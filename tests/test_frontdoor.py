"""The front door (#19.1, #19.2, #19.7) without a browser: the landing page lists what its
user may read (the JSON routes' access rules), with next steps; the fairness page and its
share data are for admins; a home gets the tutorials once; the README says what a fresh
machine needs and shows the platform on its first screen."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from loophub.spawner.home import NOTE, seed_home
from tests.labeling.conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
REVIEWS = ["A wonderful, warm film.", "Dull and far too long.", "I laughed, I cried."]


def page(api, path: str, user: str) -> requests.Response:
    base = api.url.removesuffix("api")
    return requests.get(base + path, headers={"Authorization": f"token user:{user}"},
                        timeout=30)


def text_dataset(client, name: str, tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": t, "annotations": []} for i, t in enumerate(REVIEWS)]
    make_dataset(client, name, "text_classification", ["positive", "negative"], records,
                 tmp_path / name)


def test_the_landing_page_lists_what_its_user_may_read_with_next_steps(api, tmp_path):
    ann, bob = api.client("ann"), api.client("bob")
    text_dataset(ann, "ann-reviews", tmp_path)
    revision = ann.datasets.record("ann-reviews", "r0")["revision"]
    ann.datasets.annotate("ann-reviews", "r0", {"type": "text_class", "label": "positive"},
                          revision)
    ann.datasets.commit("ann-reviews", "first")
    text_dataset(bob, "bob-secret", tmp_path)                    # private: bob's alone
    bob.datasets.create("bob-shared", visibility="group", group="team")

    html = page(api, "", "ann").text
    rows = dict(re.findall(r'<tr data-dataset="([^"]+)">(.*?)</tr>', html, re.S))
    assert set(rows) == {"ann-reviews", "bob-shared"}, rows.keys()
    assert "bob-secret" not in html
    mine = rows["ann-reviews"]
    assert "text_classification" in mine and "<td>3</td>" in mine       # records
    assert "1 / 3 done · 1 by you" in mine and "(latest v1)" in mine
    assert 'labeler_for("ann-reviews")' in mine and 'VersionBrowser("ann-reviews")' in mine
    assert "api/datasets/ann-reviews/export?format=csv&amp;version=head" in mine
    assert "commit a version to export it" in rows["bob-shared"]
    assert 'id="open-tutorial"' in html and "user-redirect/lab/tree/labeling_tour.ipynb" in html
    assert "hub/static/css/style.min.css" in html                      # the hub's look
    assert 'id="jobs"' in html and "import" in html                    # ann's import job
    assert 'id="pool"' not in html and "/fairness" not in html         # not an admin
    assert "bob-secret" in page(api, "", "bob").text
    teammate = page(api, "", "carl").text                # another member of bob's group
    assert "bob-shared" in teammate and "bob-secret" not in teammate


def test_the_export_link_downloads_the_version(api, tmp_path):
    ann = api.client("ann")
    text_dataset(ann, "exported", tmp_path)
    ann.datasets.commit("exported", "first")
    html = page(api, "", "ann").text
    link = re.search(r'href="[^"]*/(api/datasets/exported/export\?[^"]+)"', html).group(1)
    resp = page(api, link.replace("&amp;", "&"), "ann")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    assert len(resp.text.splitlines()) == 3


def test_admins_see_the_pool_and_the_queue_on_the_landing_page(api):
    html = page(api, "", "root").text
    assert 'id="pool"' in html and 'id="pool-queued"' in html
    assert 'href="/services/loophub/fairness"' in html


def test_the_fairness_page_and_its_shares_are_for_admins(api):
    assert page(api, "fairness", "ann").status_code == 403
    assert page(api, "fairness/shares", "ann").status_code == 403
    html = page(api, "fairness", "root").text
    for chart in ("utilisation-chart", "shares-chart", "queue-chart"):
        assert f'id="{chart}"' in html
    assert "static/plotly.min.js" in html
    plotly = requests.get(api.url.removesuffix("api") + "static/plotly.min.js", timeout=30)
    assert plotly.status_code == 200 and "Plotly" in plotly.text[:5000]


def test_shares_name_each_tenants_dominant_and_fair_share(api):
    """ann holds half the CPUs and waits for half more, bob holds a quarter and wants no
    more: bob's fair share is what he asks for, ann's the rest (the scheduler's
    water-filled fair share), and ann is below hers."""
    ann, bob = api.client("ann"), api.client("bob")
    cpu = api.client("root").pool()["total"]["cpu"]
    for client, job, cores in ((ann, "a1", cpu / 2), (bob, "b1", cpu / 4), (ann, "a2", cpu / 2)):
        client.request("POST", "scheduler/requests", json={
            "kind": "job", "job": job, "demand": {"cpu": cores, "mem": 2**20}})
    shares = {s["tenant"]: s for s in page(api, "fairness/shares", "root").json()["tenants"]}
    assert shares["ann"]["dominant_resource"] == "cpu"
    assert shares["ann"]["dominant_share"] == pytest.approx(0.5)
    assert shares["ann"]["fair_share"] == pytest.approx(0.75)
    assert shares["bob"]["dominant_share"] == pytest.approx(0.25)
    assert shares["bob"]["fair_share"] == pytest.approx(0.25)


def test_a_home_gets_each_tutorial_once_and_never_over_a_users_file(tmp_path):
    tutorials, home = tmp_path / "notebooks", tmp_path / "home" / "ann"
    tutorials.mkdir()
    (tutorials / "tour.ipynb").write_text("{}")
    (tutorials / "mine.ipynb").write_text("{}")
    home.mkdir(parents=True)
    (home / "mine.ipynb").write_text("my own")
    assert seed_home(home, tutorials) == ["tour.ipynb"]
    assert (home / "mine.ipynb").read_text() == "my own"
    assert json.loads((home / NOTE).read_text()) == ["tour.ipynb"]
    (home / "tour.ipynb").unlink()                                     # the user deleted it
    (tutorials / "later.ipynb").write_text("{}")
    assert seed_home(home, tutorials) == ["later.ipynb"]
    assert not (home / "tour.ipynb").exists()
    assert seed_home(home, tutorials) == []


def test_the_readme_lists_what_a_fresh_machine_needs_and_shows_the_platform():
    readme = (REPO / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:12])
    image = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", first_screen)
    assert image, "the README's first screen shows no picture of the platform"
    assert (REPO / image.group(1)).stat().st_size > 10_000
    requirements = readme[readme.index("Requirements"):][:1500]
    for package in ("chromium", "fonts-noto-cjk", "fonts-noto-color-emoji", "PostgreSQL"):
        assert package in requirements, package
