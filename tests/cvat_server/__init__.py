"""A CVAT-protocol test server (real HTTP on 127.0.0.1) that the real cvat-sdk drives.

`fixture.CvatServer` starts it as a subprocess; `fixture.cvat_server` is the pytest fixture.
"""
