"""Training (engine.train.train), evaluation (engine.evaluate.evaluate) and the launcher (engine.launch.launch).

What training and evaluation share (output dir, logging, seeds, device, autocast) is engine.runtime.

The functions are not re-exported here: ``revvit.engine.train`` must stay the module, not the function.
"""
