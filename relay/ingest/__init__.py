"""Ingest: the Segment-compatible HTTP API, from the socket to the queue.

    routes.py     the handlers of every route
    typed.py      without ingest plugins: a request decoded once into Structs, raw parts kept
    columns.py    normalise's rules on those, a column at a time; each event's bytes encoded once
    admission.py  normalise -> ingest plugins -> size check -> dead letter (routes, replay, sources)
    normalise.py  the protocol's checks and the fields the relay owns
    bodies.py     reading a body; auth.py who sent it; browser.py settings and pixels
    guard.py      the connection guard (limits, header deadlines)
    edge.py       the one middleware: CORS and JSON errors
    responses.py  the JSON bodies of every answer
"""
