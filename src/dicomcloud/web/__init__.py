"""DICOMweb and the admin HTTP API: routes, negotiation, multipart, authentication and the access log; thin over archive/."""
