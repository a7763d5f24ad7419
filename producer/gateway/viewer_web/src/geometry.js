// Pure helpers: run-length masks, slice order and position, window presets.

// The sessions API's RLE of one slice (row-major): run lengths alternating background/foreground, background first.
export function decodeRle(runs, size) {
  const mask = new Uint8Array(size);
  let at = 0;
  for (let i = 0; i < runs.length; i++) {
    const end = Math.min(size, at + runs[i]);
    if (i % 2 === 1) mask.fill(1, at, end);
    at = end;
  }
  return mask;
}

function numbers(instance, tag) {
  const element = instance[tag];
  return element && Array.isArray(element.Value) ? element.Value.map(Number) : null;
}

function normalOf(orientation) {
  const [a, b, c, d, e, f] = orientation;
  return [b * f - c * e, c * d - a * f, a * e - b * d];
}

// DICOM JSON instances in volume order: along the slice normal, else by InstanceNumber.
export function sortInstances(instances) {
  const keyed = instances.map((instance) => {
    const where = numbers(instance, "00200032");
    const orientation = numbers(instance, "00200037");
    const number = (numbers(instance, "00200013") || [0])[0];
    const along = where && orientation ? dot(where, normalOf(orientation)) : null;
    return { instance, along, number };
  });
  const spatial = keyed.every((k) => k.along !== null);
  keyed.sort((a, b) => (spatial ? a.along - b.along : 0) || a.number - b.number);
  return keyed.map((k) => k.instance);
}

function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

// A slice's position in mm along its normal (what scanners show as the slice location).
export function position(plane) {
  const normal = normalOf([...plane.rowCosines, ...plane.columnCosines]);
  return dot(plane.imagePositionPatient, normal);
}

const PRESETS = { soft: [400, 40], lung: [1500, -600], bone: [1800, 400], brain: [80, 40] };

export function presetRange(name) {
  const [width, level] = PRESETS[name];
  return { lower: level - width / 2, upper: level + width / 2 };
}

// Image coordinates (x = column, y = row; pixel (i, j) covers [i, i + 1) x [j, j + 1)) to patient mm and back.
// Written here rather than taken from core.utilities.imageToWorldCoords/worldToImageCoords: those (5.14) scale
// the row direction by the row spacing (PixelSpacing[0], the distance between rows), which misplaces points
// on images whose pixels are not square; the rendering itself is right.
export function imageToWorld(plane, [x, y]) {
  const origin = plane.imagePositionPatient;
  const across = plane.columnPixelSpacing || 1; // PixelSpacing[1]: between columns, along a row
  const down = plane.rowPixelSpacing || 1; // PixelSpacing[0]: between rows, along a column
  return [0, 1, 2].map(
    (i) => origin[i] + plane.rowCosines[i] * across * (x - 0.5) + plane.columnCosines[i] * down * (y - 0.5),
  );
}

export function worldToImage(plane, world) {
  const offset = [0, 1, 2].map((i) => world[i] - plane.imagePositionPatient[i]);
  return [
    dot(offset, plane.rowCosines) / (plane.columnPixelSpacing || 1) + 0.5,
    dot(offset, plane.columnCosines) / (plane.rowPixelSpacing || 1) + 0.5,
  ];
}
