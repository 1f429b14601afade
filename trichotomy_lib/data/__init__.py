"""Data: PhantomCXR, real file lists, patient-disjoint splits, diagnostics (DESIGN step 1)."""

from .build import DEFAULT_DATA_CFG, build_dataset, validate_data_cfg
from .diagnostics import label_prevalence, scans_per_patient
from .filelist import DataError, load_images, patient_id_from_path, read_filelist, write_filelist
from .imageset import LABELS, N_LABELS, ImageSet, images_to_uint8
from .phantom import PHANTOM_DEFAULTS, SITES, generate_phantom
from .splits import SPLIT_NAMES, split_patients

__all__ = [
    "DEFAULT_DATA_CFG", "build_dataset", "validate_data_cfg",
    "label_prevalence", "scans_per_patient",
    "DataError", "load_images", "patient_id_from_path", "read_filelist", "write_filelist",
    "LABELS", "N_LABELS", "ImageSet", "images_to_uint8",
    "PHANTOM_DEFAULTS", "SITES", "generate_phantom",
    "SPLIT_NAMES", "split_patients",
]
