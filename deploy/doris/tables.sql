-- dicomcloud warehouse tables for Apache Doris (2.1 or later).
-- Columns, types and NOT NULL rules mirror src/dicomcloud/ports/warehouse.py; a test holds them equal.
-- UNIQUE KEY tables are upserts (merge-on-write); the newer updated_at wins through the sequence column,
-- so a late, older row never replaces a newer one. DUPLICATE KEY tables are append-only logs,
-- partitioned by day.
CREATE DATABASE IF NOT EXISTS dicomcloud;
USE dicomcloud;

CREATE TABLE IF NOT EXISTS dicom_state_meta (
  tenant_id VARCHAR(64) NOT NULL,
  study_instance_uid VARCHAR(64) NOT NULL,
  series_instance_uid VARCHAR(64) NOT NULL,
  patient_id STRING NULL,
  patient_name STRING NULL,
  patient_birth_date STRING NULL,
  patient_sex STRING NULL,
  study_date STRING NULL,
  study_time STRING NULL,
  accession_number STRING NULL,
  study_id STRING NULL,
  study_description STRING NULL,
  referring_physician_name STRING NULL,
  modality STRING NULL,
  series_number INT NULL,
  series_description STRING NULL,
  series_date STRING NULL,
  series_time STRING NULL,
  body_part_examined STRING NULL,
  performed_procedure_step_start_date STRING NULL,
  performed_procedure_step_start_time STRING NULL,
  institution_name STRING NULL,
  station_name STRING NULL,
  series_related_instances INT NULL,
  updated_at DATETIME(6) NULL
)
UNIQUE KEY (tenant_id, study_instance_uid, series_instance_uid)
DISTRIBUTED BY HASH (study_instance_uid) BUCKETS AUTO
PROPERTIES (
  "enable_unique_key_merge_on_write" = "true",
  "function_column.sequence_col" = "updated_at"
);

CREATE TABLE IF NOT EXISTS dicom_image_meta (
  tenant_id VARCHAR(64) NOT NULL,
  sop_instance_uid VARCHAR(64) NOT NULL,
  study_instance_uid VARCHAR(64) NOT NULL,
  series_instance_uid VARCHAR(64) NOT NULL,
  sop_class_uid STRING NULL,
  instance_number INT NULL,
  transfer_syntax STRING NULL,
  `rows` INT NULL,
  `columns` INT NULL,
  bits_allocated INT NULL,
  number_of_frames INT NULL,
  photometric_interpretation STRING NULL,
  content_date STRING NULL,
  content_time STRING NULL,
  acquisition_date_time STRING NULL,
  image_type STRING NULL,
  file_path STRING NULL,
  file_size BIGINT NULL,
  sha256 STRING NULL,
  updated_at DATETIME(6) NULL
)
UNIQUE KEY (tenant_id, sop_instance_uid)
DISTRIBUTED BY HASH (sop_instance_uid) BUCKETS AUTO
PROPERTIES (
  "enable_unique_key_merge_on_write" = "true",
  "function_column.sequence_col" = "updated_at"
);

-- The receive log: one row per object received (C-STORE, STOW-RS or import), resends included.
CREATE TABLE IF NOT EXISTS dicom_object_meta (
  received_at DATETIME(6) NOT NULL,
  tenant_id VARCHAR(64) NOT NULL,
  study_instance_uid VARCHAR(64) NOT NULL,
  series_instance_uid VARCHAR(64) NOT NULL,
  sop_instance_uid VARCHAR(64) NOT NULL,
  sop_class_uid STRING NULL,
  transfer_syntax STRING NULL,
  patient_id STRING NULL,
  file_name STRING NULL,
  file_size BIGINT NULL,
  file_path STRING NULL,
  sha256 STRING NULL,
  source STRING NULL,
  calling_ae STRING NULL,
  called_ae STRING NULL
)
DUPLICATE KEY (received_at, tenant_id)
AUTO PARTITION BY RANGE (date_trunc(received_at, 'day')) ()
DISTRIBUTED BY HASH (study_instance_uid) BUCKETS AUTO;

-- One row per wado-server request. Never headers: no Authorization, no cookies.
CREATE TABLE IF NOT EXISTS wado_access_log (
  accessed_at DATETIME(6) NOT NULL,
  tenant_id VARCHAR(64) NOT NULL,
  user_id STRING NULL,
  client_address STRING NULL,
  method STRING NOT NULL,
  route STRING NOT NULL,
  study_instance_uid STRING NULL,
  series_instance_uid STRING NULL,
  sop_instance_uid STRING NULL,
  status INT NOT NULL,
  bytes_sent BIGINT NULL,
  duration_ms DOUBLE NULL
)
DUPLICATE KEY (accessed_at, tenant_id)
AUTO PARTITION BY RANGE (date_trunc(accessed_at, 'day')) ()
DISTRIBUTED BY RANDOM BUCKETS AUTO;

CREATE TABLE IF NOT EXISTS transcode_failure (
  failed_at DATETIME(6) NOT NULL,
  tenant_id VARCHAR(64) NOT NULL,
  study_instance_uid VARCHAR(64) NOT NULL,
  series_instance_uid VARCHAR(64) NULL,
  sop_instance_uid VARCHAR(64) NOT NULL,
  transfer_syntax STRING NULL,
  target_syntax STRING NULL,
  reason STRING NULL,
  attempts INT NULL
)
DUPLICATE KEY (failed_at, tenant_id)
DISTRIBUTED BY HASH (study_instance_uid) BUCKETS AUTO;

-- DIMSE associations and operations the access control refused (who, from where, what, why).
CREATE TABLE IF NOT EXISTS dimse_refusal (
  refused_at DATETIME(6) NOT NULL,
  tenant_id VARCHAR(64) NULL,
  calling_ae STRING NULL,
  called_ae STRING NULL,
  client_address STRING NULL,
  operation STRING NOT NULL,
  status INT NULL,
  reason STRING NULL
)
DUPLICATE KEY (refused_at)
AUTO PARTITION BY RANGE (date_trunc(refused_at, 'day')) ()
DISTRIBUTED BY RANDOM BUCKETS AUTO;

-- The loader's record of Stream Load batches: it resumes after the highest offset loaded per topic partition.
CREATE TABLE IF NOT EXISTS loaded_batch (
  label VARCHAR(128) NOT NULL,
  topic STRING NOT NULL,
  bus_partition INT NOT NULL,
  first_offset BIGINT NOT NULL,
  last_offset BIGINT NOT NULL,
  table_name STRING NOT NULL,
  row_count INT NOT NULL,
  loaded_at DATETIME(6) NOT NULL
)
UNIQUE KEY (label)
DISTRIBUTED BY HASH (label) BUCKETS 1
PROPERTIES ("enable_unique_key_merge_on_write" = "true");
