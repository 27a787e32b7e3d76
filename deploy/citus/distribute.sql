-- Distribute the dicomcloud index over a Citus cluster.
--
-- Run once on the coordinator, after `dicomcloud init` has migrated the schema and before data
-- arrives (e.g. psql --set ON_ERROR_STOP=1 -f deploy/citus/distribute.sql "$DSN").
--
-- study, series and the instance registry are hash-distributed by StudyInstanceUID and co-located,
-- so everything about one study lives on one shard: the QIDO joins (series to study, instance to
-- series and study), the ModalitiesInStudy subquery and the recounts run on one worker. Each
-- table's primary key contains study_instance_uid, as Citus requires of a distribution column.
-- patient is distributed by PatientID; no query joins it to the study tables.
-- The version sequence stays on the coordinator.

SELECT create_distributed_table('study', 'study_instance_uid');
SELECT create_distributed_table('series', 'study_instance_uid', colocate_with => 'study');
SELECT create_distributed_table('instance', 'study_instance_uid', colocate_with => 'study');
SELECT create_distributed_table('patient', 'patient_id');
