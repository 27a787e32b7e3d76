"""The statistics as SQL that DuckDB and Doris both run unchanged (shared text, not an adapter).

Stored counts come from `dicom_image_meta` (one row per instance) joined to `dicom_state_meta` for
the modality; receive, read and failure figures from the log tables. `{limit}` is an int.
"""

from __future__ import annotations

from dicomcloud.errors import InvalidInput
from dicomcloud.ports.warehouse import STATISTICS

_STORED = """
SELECT {group_select}
       COUNT(DISTINCT CONCAT(i.tenant_id, '/', i.study_instance_uid)) AS studies,
       COUNT(DISTINCT CONCAT(i.tenant_id, '/', i.series_instance_uid)) AS series,
       COUNT(*) AS instances,
       COALESCE(SUM(i.file_size), 0) AS bytes
FROM dicom_image_meta i
LEFT JOIN dicom_state_meta s
  ON s.tenant_id = i.tenant_id AND s.study_instance_uid = i.study_instance_uid
 AND s.series_instance_uid = i.series_instance_uid
{group_by}
"""
_MODALITY = "COALESCE(s.modality, '')"

STATISTICS_SQL: dict[str, str] = {
    "totals": _STORED.format(group_select="", group_by=""),
    "tenants": _STORED.format(
        group_select="i.tenant_id AS tenant_id,", group_by="GROUP BY i.tenant_id ORDER BY bytes DESC, tenant_id"
    ),
    "modalities": _STORED.format(
        group_select=f"{_MODALITY} AS modality,",
        group_by=f"GROUP BY {_MODALITY} ORDER BY instances DESC, modality",
    ),
    "storage": _STORED.format(
        group_select=f"i.tenant_id AS tenant_id, {_MODALITY} AS modality,",
        group_by=f"GROUP BY i.tenant_id, {_MODALITY} ORDER BY bytes DESC, tenant_id, modality",
    ),
    "received_per_day": """
SELECT CAST(received_at AS DATE) AS received_date,
       COUNT(DISTINCT CONCAT(tenant_id, '/', study_instance_uid)) AS studies,
       COUNT(DISTINCT CONCAT(tenant_id, '/', sop_instance_uid)) AS instances,
       COUNT(*) AS objects,
       COALESCE(SUM(file_size), 0) AS bytes
FROM dicom_object_meta
GROUP BY CAST(received_at AS DATE)
ORDER BY received_date DESC
LIMIT {limit}
""",
    "busiest_ae_titles": """
SELECT calling_ae, called_ae, COUNT(*) AS objects, COALESCE(SUM(file_size), 0) AS bytes
FROM dicom_object_meta
WHERE source = 'dimse'
GROUP BY calling_ae, called_ae
ORDER BY objects DESC, calling_ae, called_ae
LIMIT {limit}
""",
    "most_read_studies": """
SELECT tenant_id, study_instance_uid, COUNT(*) AS read_count, COALESCE(SUM(bytes_sent), 0) AS bytes_sent
FROM wado_access_log
WHERE study_instance_uid <> '' AND method = 'GET' AND status < 400
GROUP BY tenant_id, study_instance_uid
ORDER BY read_count DESC, tenant_id, study_instance_uid
LIMIT {limit}
""",
    "slowest_endpoints": """
SELECT method, route, COUNT(*) AS requests,
       ROUND(AVG(duration_ms), 3) AS mean_ms, ROUND(MAX(duration_ms), 3) AS max_ms
FROM wado_access_log
GROUP BY method, route
ORDER BY mean_ms DESC, method, route
LIMIT {limit}
""",
    "transcode_failures": """
SELECT transfer_syntax, target_syntax, COUNT(*) AS failures
FROM transcode_failure
GROUP BY transfer_syntax, target_syntax
ORDER BY failures DESC, transfer_syntax, target_syntax
LIMIT {limit}
""",
    "dimse_refusals": """
SELECT calling_ae, client_address, operation, COUNT(*) AS refusals, MAX(refused_at) AS last_refused_at
FROM dimse_refusal
GROUP BY calling_ae, client_address, operation
ORDER BY refusals DESC, calling_ae, client_address, operation
LIMIT {limit}
""",
}


def statistics_sql(name: str, limit: int) -> str:
    if name not in STATISTICS_SQL:
        raise InvalidInput(f"unknown statistic {name[:64]!r}; known: {', '.join(STATISTICS)}")
    if not 1 <= int(limit) <= 10_000:
        raise InvalidInput("limit must be between 1 and 10000")
    return STATISTICS_SQL[name].format(limit=int(limit))
