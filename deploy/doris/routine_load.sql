-- Routine Load: Doris reads the Kafka topics itself, the alternative to `dicomcloud loader`.
-- Run one of the two for a table, not both. Messages are the events' JSON (PascalCase keys, see
-- src/dicomcloud/events.py); timestamps are ISO 8601 with an offset, which Doris 2.1 parses.
-- Replace the broker list; offsets are committed by Doris, exactly once per message.
USE dicomcloud;

CREATE ROUTINE LOAD dicomcloud.load_dicom_state_meta ON dicom_state_meta
COLUMNS (`tenant_id`, `study_instance_uid`, `series_instance_uid`, `patient_id`, `patient_name`, `patient_birth_date`, `patient_sex`, `study_date`, `study_time`, `accession_number`, `study_id`, `study_description`, `referring_physician_name`, `modality`, `series_number`, `series_description`, `series_date`, `series_time`, `body_part_examined`, `performed_procedure_step_start_date`, `performed_procedure_step_start_time`, `institution_name`, `station_name`, `series_related_instances`, `updated_at`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.TenantID\", \"$.StudyInstanceUID\", \"$.SeriesInstanceUID\", \"$.PatientID\", \"$.PatientName\", \"$.PatientBirthDate\", \"$.PatientSex\", \"$.StudyDate\", \"$.StudyTime\", \"$.AccessionNumber\", \"$.StudyID\", \"$.StudyDescription\", \"$.ReferringPhysicianName\", \"$.Modality\", \"$.SeriesNumber\", \"$.SeriesDescription\", \"$.SeriesDate\", \"$.SeriesTime\", \"$.BodyPartExamined\", \"$.PerformedProcedureStepStartDate\", \"$.PerformedProcedureStepStartTime\", \"$.InstitutionName\", \"$.StationName\", \"$.SeriesRelatedInstances\", \"$.UpdatedAt\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "dicom_state_queue",
  "property.group.id" = "doris-dicom_state_meta",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);

CREATE ROUTINE LOAD dicomcloud.load_dicom_image_meta ON dicom_image_meta
COLUMNS (`tenant_id`, `sop_instance_uid`, `study_instance_uid`, `series_instance_uid`, `sop_class_uid`, `instance_number`, `transfer_syntax`, `rows`, `columns`, `bits_allocated`, `number_of_frames`, `photometric_interpretation`, `content_date`, `content_time`, `acquisition_date_time`, `image_type`, `file_path`, `file_size`, `sha256`, `updated_at`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.TenantID\", \"$.SOPInstanceUID\", \"$.StudyInstanceUID\", \"$.SeriesInstanceUID\", \"$.SOPClassUID\", \"$.InstanceNumber\", \"$.TransferSyntax\", \"$.Rows\", \"$.Columns\", \"$.BitsAllocated\", \"$.NumberOfFrames\", \"$.PhotometricInterpretation\", \"$.ContentDate\", \"$.ContentTime\", \"$.AcquisitionDateTime\", \"$.ImageType\", \"$.FilePath\", \"$.FileSize\", \"$.Sha256\", \"$.UpdatedAt\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "dicom_image_queue",
  "property.group.id" = "doris-dicom_image_meta",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);

CREATE ROUTINE LOAD dicomcloud.load_dicom_object_meta ON dicom_object_meta
COLUMNS (`received_at`, `tenant_id`, `study_instance_uid`, `series_instance_uid`, `sop_instance_uid`, `sop_class_uid`, `transfer_syntax`, `patient_id`, `file_name`, `file_size`, `file_path`, `sha256`, `source`, `calling_ae`, `called_ae`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.ReceivedAt\", \"$.TenantID\", \"$.StudyInstanceUID\", \"$.SeriesInstanceUID\", \"$.SOPInstanceUID\", \"$.SOPClassUID\", \"$.TransferSyntax\", \"$.PatientID\", \"$.FileName\", \"$.FileSize\", \"$.FilePath\", \"$.Sha256\", \"$.Source\", \"$.CallingAE\", \"$.CalledAE\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "log_queue",
  "property.group.id" = "doris-dicom_object_meta",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);

CREATE ROUTINE LOAD dicomcloud.load_wado_access_log ON wado_access_log
COLUMNS (`accessed_at`, `tenant_id`, `user_id`, `client_address`, `method`, `route`, `study_instance_uid`, `series_instance_uid`, `sop_instance_uid`, `status`, `bytes_sent`, `duration_ms`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.AccessedAt\", \"$.TenantID\", \"$.UserID\", \"$.ClientAddress\", \"$.Method\", \"$.Route\", \"$.StudyInstanceUID\", \"$.SeriesInstanceUID\", \"$.SOPInstanceUID\", \"$.Status\", \"$.BytesSent\", \"$.DurationMs\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "wado_access_log",
  "property.group.id" = "doris-wado_access_log",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);

CREATE ROUTINE LOAD dicomcloud.load_transcode_failure ON transcode_failure
COLUMNS (`failed_at`, `tenant_id`, `study_instance_uid`, `series_instance_uid`, `sop_instance_uid`, `transfer_syntax`, `target_syntax`, `reason`, `attempts`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.FailedAt\", \"$.TenantID\", \"$.StudyInstanceUID\", \"$.SeriesInstanceUID\", \"$.SOPInstanceUID\", \"$.TransferSyntax\", \"$.TargetSyntax\", \"$.Reason\", \"$.Attempts\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "transcode_failure",
  "property.group.id" = "doris-transcode_failure",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);

CREATE ROUTINE LOAD dicomcloud.load_dimse_refusal ON dimse_refusal
COLUMNS (`refused_at`, `tenant_id`, `calling_ae`, `called_ae`, `client_address`, `operation`, `status`, `reason`)
PROPERTIES (
  "format" = "json",
  "jsonpaths" = "[\"$.RefusedAt\", \"$.TenantID\", \"$.CallingAE\", \"$.CalledAE\", \"$.ClientAddress\", \"$.Operation\", \"$.Status\", \"$.Reason\"]",
  "strict_mode" = "false",
  "max_error_number" = "0",
  "max_batch_interval" = "10"
)
FROM KAFKA (
  "kafka_broker_list" = "kafka:9092",
  "kafka_topic" = "dimse_refusal",
  "property.group.id" = "doris-dimse_refusal",
  "property.kafka_default_offsets" = "OFFSET_BEGINNING"
);
