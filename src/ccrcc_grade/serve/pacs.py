"""A DICOMweb PACS (e.g. Orthanc with its DICOMweb plugin) through ``dicomweb-client``:
QIDO-RS to search studies, WADO-RS to retrieve one, STOW-RS to store the SR back."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pydicom

from ccrcc_grade.core.errors import CcrccError


class PacsError(CcrccError):
    """The PACS is unreachable or answered with an error (HTTP 502)."""

    http_status = 502


def _value(item: dict, tag: str) -> str:
    v = item.get(tag, {}).get("Value", [""])[0]
    if isinstance(v, dict):  # PersonName
        return str(v.get("Alphabetic", ""))
    return str(v)


class Pacs:
    def __init__(self, url: str, timeout: float = 15.0):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        session = requests.Session()
        session.request = functools.partial(session.request, timeout=timeout)  # never hang on a dead PACS
        self.session = session
        self.client = DICOMwebClient(url=self.url, session=session)
        self.client.set_http_retry_params(retry=False)  # a dead PACS answers at once, not after 30 s of back-off

    def _call(self, what: str, fn: Callable, *args: object, **kwargs: object) -> object:
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.ConnectionError:
            raise PacsError(f"the PACS at {self.url} is not reachable ({what})") from None
        except requests.exceptions.Timeout:
            raise PacsError(f"the PACS at {self.url} did not answer in time ({what})") from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise PacsError(f"the PACS at {self.url} answered HTTP {code} ({what})") from None

    def search(self, patient_id: str = "", name: str = "", date: str = "") -> list[dict]:
        """Studies matching a patient id, a name (wildcards * and ? allowed) and/or a date
        (YYYYMMDD or a range). The QIDO-RS query is written here rather than by dicomweb-client,
        which percent-encodes the wildcards (``%2A``): Orthanc 1.10 then matches them literally
        and a name search finds nothing."""
        from urllib.parse import quote

        filters = {k: v for k, v in (("PatientID", patient_id), ("PatientName", name), ("StudyDate", date)) if v}
        query = [f"{k}={quote(v, safe='*?^-')}" for k, v in filters.items()]
        query += [f"includefield={f}" for f in ("StudyDescription", "NumberOfStudyRelatedSeries")]
        url = f"{self.url}/studies?{'&'.join(query)}"

        def get() -> list[dict]:
            r = self.session.get(url, headers={"Accept": "application/dicom+json"})
            r.raise_for_status()
            try:
                return r.json() if r.content else []
            except ValueError:
                raise PacsError(f"the PACS at {self.url} answered the study search with something not JSON") from None

        found = self._call("study search", get)
        return [
            {
                "study_uid": _value(s, "0020000D"),
                "patient_id": _value(s, "00100020"),
                "patient_name": _value(s, "00100010"),
                "date": _value(s, "00080020"),
                "description": _value(s, "00081030"),
                "series": _value(s, "00201206"),
            }
            for s in found
        ]

    def retrieve(self, study_uid: str) -> list[pydicom.Dataset]:
        return self._call("study retrieval", self.client.retrieve_study, study_uid)

    def store(self, ds: pydicom.Dataset) -> None:
        self._call("storing the SR", self.client.store_instances, [ds])
