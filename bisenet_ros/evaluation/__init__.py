"""Fleet evaluation: one model (or model A against model B) over many bags, one exact report.

``bisenet-ros evaluate`` (module :mod:`bisenet_ros.commands.evaluate`) runs each bag through the
replay pipeline (:mod:`bisenet_ros.replay`) without an output bag and sums the per-bag confusion
matrices. Modules: :mod:`~bisenet_ros.evaluation.bags` (which bags, content keys),
:mod:`~bisenet_ros.evaluation.job` (one bag), :mod:`~bisenet_ros.evaluation.runners` (in
process, local workers, Ray), :mod:`~bisenet_ros.evaluation.fleet` (plan, cache, aggregate,
compare) and :mod:`~bisenet_ros.evaluation.report`. Importing this package imports nothing heavy.
"""
