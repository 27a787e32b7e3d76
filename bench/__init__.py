"""Side-by-side benchmark of dicomcloud against Orthanc (issue 7): same machine, data and clients."""
