"""Side-by-side benchmark of dicomcloud against Orthanc: same machine, data and clients."""
