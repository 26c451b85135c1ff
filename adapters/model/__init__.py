"""The model and its data: loading, units, input capture, token sets, calibration Hessians, integrity checks."""
