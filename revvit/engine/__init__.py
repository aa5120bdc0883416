"""Training (engine.train.train), evaluation (engine.evaluate.evaluate) and the launcher (engine.launch.launch).

docs/CONTRIBUTING.md maps each job of the engine to its module.

The functions are not re-exported here: ``revvit.engine.train`` must stay the module, not the function.
"""
