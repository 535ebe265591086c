"""The built-in demo staging: the seed's three-tier scene on this machine, no cluster.

``tether demo`` (``make demo``) builds a throw-away staging out of network namespaces
(tether.testbed): the ``silly-demo`` backend pod running ``app.py`` with its database
credentials in its environment, then runs the same app locally under ``tether exec``
with a changed message and shows, scene by scene, what the local process gets from the
pod.  Everything is removed at the end, whatever happens.
"""
