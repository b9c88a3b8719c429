"""Streaming recognition server, its websocket protocol, the microphone page and Python clients.

* :mod:`asr.serve.protocol`: the sherpa-onnx compatible websocket protocol (float32 PCM in,
  JSON results out, ``Done``), with the optional sample-rate announcement;
* :mod:`asr.serve.engine`: one batching decode loop over all live streams;
* :mod:`asr.serve.server`: the asyncio server (``asr serve``), limits and graceful shutdown;
* :mod:`asr.serve.web`: the fixed static files of the microphone page (``static/``);
* :mod:`asr.serve.client`: file and microphone clients (``python -m asr.serve.client``).
"""
