"""The README says what the code does and stands on its own: its transfer syntax table lists every accepted syntax
once, and whether each one is decoded (pydicom has a decoder for it, or libjpeg-turbo reads it) and encoded (a
transcode target); every file it links or shows is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.pixels.decoders.base import get_decoder

from dicomcloud.dicom.codecs import RETIRED_JPEG, TRANSCODE_TARGETS
from dicomcloud.dicom.uids import ACCEPTED_SYNTAXES

README = Path(__file__).parents[2] / "README.md"


def syntax_rows() -> dict[str, list[str]]:
    """Each UID of the Transfer syntaxes table with its row's Accepted, Served as stored, Decoded, Encoded cells."""
    section = README.read_text().split("\n## Transfer syntaxes\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != 6 or not cells[1].startswith("`"):
            continue
        for uid in re.findall(r"`([0-9.]+)`", cells[1]):
            assert uid not in rows, f"{uid} is listed twice"
            rows[uid] = [cell.split()[0] for cell in cells[2:]]
    return rows


def decodes(uid: str) -> bool:
    if uid in RETIRED_JPEG:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def test_the_table_lists_every_accepted_syntax_and_no_other() -> None:
    assert set(syntax_rows()) == {str(uid) for uid in ACCEPTED_SYNTAXES}


def test_the_table_says_which_syntaxes_are_decoded_and_encoded() -> None:
    for uid, (accepted, as_stored, decoded, encoded) in syntax_rows().items():
        assert (accepted, as_stored) == ("yes", "yes"), uid
        assert decoded == ("yes" if decodes(uid) else "no"), uid
        assert encoded == ("yes" if uid in TRANSCODE_TARGETS else "no"), uid


def test_the_readme_stands_on_its_own_without_issue_numbers() -> None:
    assert not re.search(r"\bissues? #?\d", README.read_text(), re.IGNORECASE)


def test_every_file_the_readme_links_or_shows_is_in_the_repository() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    local = [target for target in targets if "://" not in target]
    assert "docs/viewer.png" in local and "docs/dashboard.png" in local
    for target in local:
        path = (README.parent / target).resolve()
        assert path.is_relative_to(README.parent) and path.exists(), target
