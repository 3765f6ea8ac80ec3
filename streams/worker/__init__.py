"""The faust worker: interactions → per-user history table → ONNX user tower → Milvus → recall over HTTP.

    app.py       the faust App, its topics and tables, the two agents and the stall timer: the stream graph
    batches.py   the work inside the agents, as plain methods (no Kafka needed to test them)
    service.py   a faust.Service owning the tower runtime, the store, the outage state and the retries
    web.py       the HTTP views and the routing of a request to the worker that owns the user
    watchdog.py  the stall watchdog: partitions with a lag that nothing reads are seeked back to the commit

Run with `mind-stream worker --artifact DIR` (settings: streams/config.py).
"""
