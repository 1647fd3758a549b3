"""A local, in-process fake of GitHub for tests.

``FakeGitHub`` runs three HTTP servers on ``127.0.0.1`` (ephemeral ports), one
per origin GitHub uses when a client lists and downloads release assets:

* ``api_url``     -- like ``https://api.github.com`` (JSON REST API)
* ``web_url``     -- like ``https://github.com`` / ``codeload.github.com``
  (``browser_download_url`` redirects, repository archives)
* ``objects_url`` -- like ``objects.githubusercontent.com`` (signed, expiring
  blob URLs with byte-range support)

State comes from ``tests/data/spacy-models`` (1,099 real releases of
``explosion/spacy-models`` and the repository's data files). Tests can mutate it
(``add_release``, ``add_asset``, ``set_asset_content``, ``remove_release``) and
queue faults (``inject(Fault...)``). Every request on every origin is recorded
in ``requests``.

Behaviour follows the live service where it is known:

* ``GET /repos/{o}/{r}/releases`` refuses pages whose offset reaches 1,000 with
  422 ``Only the first 1000 results are available.``, but its ``Link`` header is
  computed from the full count, so page 10 (``per_page=100``) still advertises
  ``rel="next"`` page 11 and ``rel="last"`` page 11 -- clients that blindly follow
  ``next`` get the 422 (as go-github and hub users have reported). Pass
  ``cap_links=True`` for a Link header that stops at the cap instead.
* ``GET /repos/{o}/{r}/git/matching-refs/...`` ignores ``per_page``/``page`` and
  returns every matching ref without a Link header (github/docs#3863,
  google/go-github#1567). Pass ``paginate_matching_refs=True`` to honour them.
* Fixture asset digests are served as ``null`` (the live API only sets
  ``digest`` for assets uploaded since June 2025) unless ``keep_digests=True``.

Usage::

    with FakeGitHub(token="t0k") as gh:
        gh.set_asset_content("en_core_web_sm-3.7.1",
                             "en_core_web_sm-3.7.1-py3-none-any.whl", b"wheel")
        httpx.get(f"{gh.api_url}/repos/explosion/spacy-models/releases",
                  headers={"Authorization": "Bearer t0k"})
"""

from tests.fakegithub.core import FakeGitHub
from tests.fakegithub.data import RELEASES_FIXTURE
from tests.fakegithub.faults import Fault, RecordedRequest

__all__ = ["RELEASES_FIXTURE", "FakeGitHub", "Fault", "RecordedRequest"]
