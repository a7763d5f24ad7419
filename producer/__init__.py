"""Producer: finds studies, submits them (in-process or to a broker), collects and evaluates results.

Needs neither OpenVINO nor torch unless it runs the engine in-process (the embedded default).
"""
