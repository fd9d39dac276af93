"""What several checks share and no check owns: duplicate groups and keep policies
(:mod:`.groups`), confident learning's label-issue arithmetic (:mod:`.confident`).

No module here defines a check; the checks themselves are one module each in the package above.
"""
