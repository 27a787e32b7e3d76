"""The statistics as SQL that DuckDB and Doris both run unchanged (shared text, not an adapter).

Stored counts come from `dicom_image_meta` (one row per instance) joined to `dicom_state_meta` for
the modality; receive, read and failure figures from the log tables, counted from `{since}` on (a
DATETIME literal made here from a datetime, never from a request's text). `{limit}` is an int.
"""

from __future__ import annotations

from datetime import datetime

from dicomcloud.errors import InvalidInput
from dicomcloud.ports.warehouse import STATISTICS, warehouse_datetime

# What "since the beginning" means to the logs' time columns.
EPOCH = datetime(1970, 1, 1)

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
    "received": """
SELECT COUNT(DISTINCT CONCAT(tenant_id, '/', study_instance_uid)) AS studies,
       COUNT(DISTINCT CONCAT(tenant_id, '/', sop_instance_uid)) AS instances,
       COUNT(*) AS objects,
       COALESCE(SUM(file_size), 0) AS bytes,
       MIN(received_at) AS first_received_at,
       MAX(received_at) AS last_received_at
FROM dicom_object_meta
WHERE received_at >= {since}
""",
    "received_per_day": """
SELECT CAST(received_at AS DATE) AS received_date,
       COUNT(DISTINCT CONCAT(tenant_id, '/', study_instance_uid)) AS studies,
       COUNT(DISTINCT CONCAT(tenant_id, '/', sop_instance_uid)) AS instances,
       COUNT(*) AS objects,
       COALESCE(SUM(file_size), 0) AS bytes
FROM dicom_object_meta
WHERE received_at >= {since}
GROUP BY CAST(received_at AS DATE)
ORDER BY received_date DESC
LIMIT {limit}
""",
    "received_per_hour": """
SELECT CAST(received_at AS DATE) AS received_date, HOUR(received_at) AS received_hour,
       COUNT(DISTINCT CONCAT(tenant_id, '/', sop_instance_uid)) AS instances,
       COUNT(*) AS objects,
       COALESCE(SUM(file_size), 0) AS bytes
FROM dicom_object_meta
WHERE received_at >= {since}
GROUP BY CAST(received_at AS DATE), HOUR(received_at)
ORDER BY received_date DESC, received_hour DESC
LIMIT {limit}
""",
    "busiest_ae_titles": """
SELECT calling_ae, called_ae, COUNT(*) AS objects, COALESCE(SUM(file_size), 0) AS bytes
FROM dicom_object_meta
WHERE source = 'dimse' AND received_at >= {since}
GROUP BY calling_ae, called_ae
ORDER BY objects DESC, calling_ae, called_ae
LIMIT {limit}
""",
    "requests": """
SELECT COUNT(*) AS requests,
       COALESCE(SUM(CASE WHEN status < 400 AND method = 'GET' AND study_instance_uid <> '' THEN 1 ELSE 0 END), 0)
         AS reads,
       COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS failed,
       COALESCE(SUM(bytes_sent), 0) AS bytes_sent
FROM wado_access_log
WHERE accessed_at >= {since}
""",
    "most_read_studies": """
SELECT r.tenant_id AS tenant_id, r.study_instance_uid AS study_instance_uid,
       MAX(s.patient_name) AS patient_name, MAX(s.patient_id) AS patient_id,
       MAX(s.study_description) AS study_description, MAX(s.study_date) AS study_date,
       r.read_count AS read_count, r.bytes_sent AS bytes_sent
FROM (
  SELECT tenant_id, study_instance_uid, COUNT(*) AS read_count, COALESCE(SUM(bytes_sent), 0) AS bytes_sent
  FROM wado_access_log
  WHERE study_instance_uid <> '' AND method = 'GET' AND status < 400 AND accessed_at >= {since}
  GROUP BY tenant_id, study_instance_uid
) r
LEFT JOIN dicom_state_meta s ON s.tenant_id = r.tenant_id AND s.study_instance_uid = r.study_instance_uid
GROUP BY r.tenant_id, r.study_instance_uid, r.read_count, r.bytes_sent
ORDER BY read_count DESC, tenant_id, study_instance_uid
LIMIT {limit}
""",
    "slowest_endpoints": """
SELECT method, route, COUNT(*) AS requests,
       ROUND(AVG(duration_ms), 3) AS mean_ms, ROUND(MAX(duration_ms), 3) AS max_ms
FROM wado_access_log
WHERE accessed_at >= {since}
GROUP BY method, route
ORDER BY mean_ms DESC, method, route
LIMIT {limit}
""",
    "transcode_failures": """
SELECT transfer_syntax, target_syntax, reason, COUNT(*) AS failures, MAX(failed_at) AS last_failed_at
FROM transcode_failure
WHERE failed_at >= {since}
GROUP BY transfer_syntax, target_syntax, reason
ORDER BY failures DESC, transfer_syntax, target_syntax, reason
LIMIT {limit}
""",
    "dimse_refusals": """
SELECT calling_ae, client_address, operation, COUNT(*) AS refusals, MAX(refused_at) AS last_refused_at
FROM dimse_refusal
WHERE refused_at >= {since}
GROUP BY calling_ae, client_address, operation
ORDER BY refusals DESC, calling_ae, client_address, operation
LIMIT {limit}
""",
}


def statistics_sql(name: str, limit: int, since: datetime | None = None) -> str:
    if name not in STATISTICS_SQL:
        raise InvalidInput(f"unknown statistic {name[:64]!r}; known: {', '.join(STATISTICS)}")
    if not 1 <= int(limit) <= 10_000:
        raise InvalidInput("limit must be between 1 and 10000")
    literal = warehouse_datetime((since or EPOCH).isoformat())
    return STATISTICS_SQL[name].format(limit=int(limit), since=f"CAST('{literal}' AS DATETIME)")
