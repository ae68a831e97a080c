"""``diffbir bench``: restore a test set with several configurations and compare them.

* :mod:`.grid` - the configurations (``--configs v2.1:steps=10/20,hypir``), torch-free;
* :mod:`.store` - each configuration's folder and its JSON records (resuming);
* :mod:`.memory` - the peak memory of each image (CUDA allocator, or the process RSS);
* :mod:`.run` - make the LQ set, restore with each configuration, evaluate, resume;
* :mod:`.report` - ``report.md`` and the plots (matplotlib, the ``bench`` extra).
"""
