"""The model presets' Gin names: `gemma_config` (GemmaConfig.preset) and `t5_config`
(T5Config.preset), as in `t5_config.name = "base"` then `MODEL_CONFIG = @t5_config()`
(gin/models/*.gin).

They are registered here and not in the model modules, so that importing a model registers
nothing: a job whose Gin config is already locked (the sampling job loads Gemma on its first
batch) can then import the models without lifting the lock. gin/models/*.gin import this module,
and so does lmcor.training.builders, so a run's saved config.gin parses too. The selectors keep the
model modules' names (`lmcor.models.t5.t5_config`).
"""
import gin

from lmcor.models.gemma import GemmaConfig
from lmcor.models.t5 import T5Config

gemma_config = gin.external_configurable(GemmaConfig.preset, name="gemma_config",
                                         module="lmcor.models.gemma")
t5_config = gin.external_configurable(T5Config.preset, name="t5_config", module="lmcor.models.t5")
