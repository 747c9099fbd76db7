"""The platform room: typed configuration, the ``lvr1`` command line and the pipeline driver.

It sits on top of every other room and may import any of them; nothing imports it back.
"""
