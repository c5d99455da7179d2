"""The Sora modeling code attached to an export, so that it loads where Sora is not installed:
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`.

config.json gets an `auto_map` naming the classes by `<module>.<class>`, and the modules go into
the export folder. transformers (`dynamic_module_utils.get_class_from_dynamic_module`) copies
the named module and, recursively, every module it imports relatively (`from .layers import ...`)
from that folder into its own module cache and imports them from there as a package; each of them
must therefore be in the folder, and every absolute import must be installed (torch,
transformers). In a process that has imported `sora` the registered local classes win, so the
attachment changes nothing for the pipeline's own readers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PretrainedConfig

# Auto class -> `<module file stem>.<class>` in the export folder.
SORA_AUTO_MAP = {
    "AutoConfig": "configuration_sora.SoraConfig",
    "AutoModel": "modeling_sora.SoraModel",
    "AutoModelForCausalLM": "modeling_sora.SoraForCausalLM",
    "AutoModelForSequenceClassification": "modeling_sora.SoraForSequenceClassification",
}


def remote_code_files() -> list[Path]:
    """The `sora` modules the auto-mapped classes need: the mapped modules and all they import."""
    from transformers.dynamic_module_utils import get_relative_import_files

    import sora

    package = Path(sora.__file__).parent
    files = {package / f"{target.split('.')[0]}.py" for target in SORA_AUTO_MAP.values()}
    for file in list(files):
        files.update(Path(path) for path in get_relative_import_files(str(file)))
    return sorted(files)


def attach_remote_code(config: PretrainedConfig, folder: Path) -> None:
    """Copy the modeling code into `folder` and set `config.auto_map` (before config.json is saved)."""
    config.auto_map = dict(SORA_AUTO_MAP)
    for file in remote_code_files():
        shutil.copyfile(file, Path(folder) / file.name)
