"""The applications: what ``asr train`` and ``asr decode`` run, assembled from the layers below."""
