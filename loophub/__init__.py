"""loophub: the closed loop of AI application development on JupyterHub.

This package is the domain: it imports nothing from Jupyter. The top-level rooms
(spawner/, extensions/, widgets/, serving/, hub_config/) are mapped into the
``loophub.*`` namespace by setup.cfg and adapt it to JupyterHub, notebooks and HTTP.
"""

__version__ = "0.1.0"
