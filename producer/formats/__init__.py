"""Readers and writers for the study formats the producer understands.

npz (challenge), DICOM (dicom_files: one file; dicom_groups: files -> studies; dicom_geometry: slice order and
geometry; dicom: series -> ImageVolume; dicom_reference: the JSON header subset the writers need, anonymised headers
completed; seg: DICOM SEG out; rtstruct: RT Structure Set out), NIfTI (nifti), and what turns a hospital image into a
Study: volume (ImageVolume, VolumeGeometry), sidecar (prompts JSON), boxes (prompts -> voxel boxes), modality
(DICOM tag -> routing name), intensity (8-bit rules), hospital (all of it -> Study). docs/user-guide/inputs.md and
outputs.md describe the formats for users.
"""
