"""A DICOMweb server as a peer to import from: QIDO-RS lists its studies and their instances, WADO-RS
fetches each instance as stored (`transfer-syntax=*`), streamed into the staged file part by part."""

from __future__ import annotations

from typing import Any, BinaryIO

import httpx

from dicomcloud.errors import InvalidInput, StorageFailure
from dicomcloud.ports.peer import RemoteInstance
from dicomcloud.web.multipart import MultipartParser, PartData, PartStart
from dicomcloud.web.negotiation import parse_media_type

# QIDO-RS results asked for per request; the server may give fewer, so paging goes on until an empty page.
PAGE = 500
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS_UID = "0020000D", "0020000E", "00080018", "00080016"


class DicomwebPeer:
    def __init__(self, url: str, token: str = "", basic: tuple[str, str] | None = None, timeout: float = 60.0) -> None:
        """`token`: an OAuth2 bearer token; `basic`: a user and password (HTTP basic authentication)."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(headers=headers, auth=basic, timeout=timeout, follow_redirects=False)

    @property
    def name(self) -> str:
        return self.url

    def studies(self) -> list[str]:
        return [_value(match, STUDY_UID) for match in self._search("/studies", STUDY_UID)]

    def instances(self, study_instance_uid: str) -> list[RemoteInstance]:
        fields = (SERIES_UID, SOP_UID, SOP_CLASS_UID)
        return [
            RemoteInstance(study_instance_uid, _value(m, SERIES_UID), _value(m, SOP_UID), _value(m, SOP_CLASS_UID))
            for m in self._search(f"/studies/{study_instance_uid}/instances", *fields)
        ]

    def fetch(self, instance: RemoteInstance, into: BinaryIO) -> None:
        path = (
            f"/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}"
        )
        with self._client.stream("GET", self.url + path, headers={"Accept": AS_STORED}) as response:
            if response.status_code != 200:
                raise StorageFailure(f"WADO-RS {path} answered {response.status_code}")
            media = parse_media_type(response.headers.get("content-type", ""))
            boundary = media.params.get("boundary")
            if not media.is_multipart_related or not boundary:
                raise StorageFailure(f"WADO-RS {path} answered {media.media_type}, not multipart/related")
            parser = MultipartParser(boundary)
            parts = 0
            try:
                for chunk in response.iter_bytes():
                    for event in parser.feed(chunk):
                        if isinstance(event, PartStart):
                            parts += 1
                        elif isinstance(event, PartData) and parts == 1:
                            into.write(event.data)
                parser.finish()
            except InvalidInput as exc:
                raise StorageFailure(f"WADO-RS {path}: {exc.message}") from exc
            if parts != 1:
                raise StorageFailure(f"WADO-RS {path} answered {parts} parts, not 1")
        into.flush()

    def close(self) -> None:
        self._client.close()

    def _search(self, path: str, *fields: str) -> list[dict[str, Any]]:
        """Every match of a QIDO-RS search, page by page, until a page brings nothing new (an empty one, or
        the same again from a server that ignores `offset`)."""
        matches: dict[tuple[str, ...], dict[str, Any]] = {}
        while True:
            params: list[tuple[str, str | int | float | bool | None]] = [("limit", PAGE), ("offset", len(matches))]
            params += [("includefield", field) for field in fields]
            response = self._client.get(self.url + path, params=params, headers={"Accept": "application/dicom+json"})
            if response.status_code == 204:
                break
            if response.status_code in (401, 403):
                raise StorageFailure(
                    f"QIDO-RS {path} answered {response.status_code}: the peer wants credentials it accepts"
                    " (--token-file or --basic-auth-file)"
                )
            if response.status_code != 200:
                raise StorageFailure(f"QIDO-RS {path} answered {response.status_code}: {response.text[:200]}")
            before = len(matches)
            matches.update((tuple(_value(m, f) for f in fields), m) for m in response.json())
            if len(matches) == before:
                break
        return list(matches.values())


def _value(match: dict[str, Any], tag: str) -> str:
    values = match.get(tag, {}).get("Value") or [""]
    return str(values[0])
