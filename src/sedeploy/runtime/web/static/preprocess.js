// sedeploy's preprocessing in the page: the same steps and the same integer arithmetic as the Python
// runtime (sedeploy.core.decode + sedeploy.runtime.preprocess), so the page feeds the model the tensor
// `sedeploy infer` would:
//   decode (the browser's decoder; EXIF orientation applied, no colour management, as Pillow),
//   refuse more than max_pixels, composite transparency on the background (Pillow's alpha_composite),
//   convert to the model's mode (Pillow's RGB -> L: ITU-R 601-2 luma in 16.16 fixed point),
//   resize to H x W with Pillow's BILINEAR resampling (Resample.c: the same coefficients, 22-bit fixed
//   point, a horizontal then a vertical pass, each rounded to 8 bits), then (x / 255 - mean) / std in float32.

const PRECISION_BITS = 22;                   // Pillow: 32 - 8 - 2
const FIXED_ONE = 2 ** PRECISION_BITS;

export const FILTERS = {
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {                              // Pillow's a = -0.5
      const a = -0.5; x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
};

// Resample.c precompute_coeffs: per output pixel, the first input pixel, the count and the weights.
export function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function fixedPoint(kk) {                    // normalize_coeffs_8bpc
  const out = new Float64Array(kk.length);
  for (let i = 0; i < kk.length; i++) {
    out[i] = kk[i] < 0 ? Math.trunc(-0.5 + kk[i] * FIXED_ONE) : Math.trunc(0.5 + kk[i] * FIXED_ONE);
  }
  return out;
}

function clip8(v) {                          // clip8: arithmetic shift, then clamp
  const q = Math.floor(v / FIXED_ONE);
  return q < 0 ? 0 : q > 255 ? 255 : q;
}

// One 8-bit pass along x (horizontal) or y (vertical) of a planar image (bands, h, w).
function pass8(src, bands, h, w, outLen, horizontal, filter) {
  const c = coefficients(horizontal ? w : h, outLen, filter);
  const k = fixedPoint(c.kk);
  const ow = horizontal ? outLen : w, oh = horizontal ? h : outLen;
  const out = new Uint8Array(bands * oh * ow);
  const half = 2 ** (PRECISION_BITS - 1);
  for (let b = 0; b < bands; b++) {
    const s0 = b * h * w, d0 = b * oh * ow;
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const i = horizontal ? x : y;
        const min = c.bounds[2 * i], n = c.bounds[2 * i + 1], k0 = i * c.ksize;
        let ss = half;
        if (horizontal) { const row = s0 + y * w + min; for (let t = 0; t < n; t++) ss += src[row + t] * k[k0 + t]; }
        else { const col = s0 + min * w + x; for (let t = 0; t < n; t++) ss += src[col + t * w] * k[k0 + t]; }
        out[d0 + y * ow + x] = clip8(ss);
      }
    }
  }
  return out;
}

// Pillow's Image.resize((W, H), BILINEAR) of an 8-bit planar image (bands, h, w) -> (bands, H, W).
// The pass order matters (each pass rounds to 8 bits): Pillow < 13 always resamples horizontally first;
// Pillow 13 first vertically when the height shrinks by more than twice as many pixels as the width
// (Resample.c, ImagingResampleInner). `verticalFirstRule` says which Pillow the Python runtime has.
export function resize8(src, bands, h, w, H, W, verticalFirstRule = true) {
  const horizontalFirst = !(verticalFirstRule && h - H > 0 && h - H > (w - W) * 2);
  let a = src;
  if (horizontalFirst) {
    if (W !== w) a = pass8(a, bands, h, w, W, true, FILTERS.bilinear);
    if (H !== h) a = pass8(a, bands, h, W, H, false, FILTERS.bilinear);
  } else {
    if (H !== h) a = pass8(a, bands, h, w, H, false, FILTERS.bilinear);
    if (W !== w) a = pass8(a, bands, H, w, W, true, FILTERS.bilinear);
  }
  return a;
}

// Pillow's resize of a float ('F') image (h, w) -> (H, W): double sums, float32 between passes.
export function resizeFloat(src, h, w, H, W, filter = FILTERS.bicubic) {
  let a = Float32Array.from(src), cw = w;
  const run = (img, ih, iw, outLen, horizontal) => {
    const c = coefficients(horizontal ? iw : ih, outLen, filter);
    const ow = horizontal ? outLen : iw, oh = horizontal ? ih : outLen;
    const out = new Float32Array(oh * ow);
    for (let y = 0; y < oh; y++) for (let x = 0; x < ow; x++) {
      const i = horizontal ? x : y, min = c.bounds[2 * i], n = c.bounds[2 * i + 1], k0 = i * c.ksize;
      let ss = 0.0;
      for (let t = 0; t < n; t++) ss += (horizontal ? img[y * iw + min + t] : img[(min + t) * iw + x]) * c.kk[k0 + t];
      out[y * ow + x] = ss;
    }
    return out;
  };
  if (W !== w) { a = run(a, h, w, W, true); cw = W; }
  if (H !== h) a = run(a, h, cw, H, false);
  return a;
}

// RGBA (as ImageData gives it, straight alpha) -> planar 'L' or 'RGB' bytes, as core.decode.to_model_mode.
export function toModelMode(rgba, n, channels, background = [0, 0, 0]) {
  const r = new Uint8Array(n), g = new Uint8Array(n), b = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let R = rgba[4 * i], G = rgba[4 * i + 1], B = rgba[4 * i + 2];
    const A = rgba[4 * i + 3];
    if (A !== 255) {                         // Pillow's alpha_composite over an opaque background
      const outa255 = A * 255 + 255 * (255 - A);
      const coef1 = Math.floor(A * 255 * 255 * 128 / outa255);
      const coef2 = 255 * 128 - coef1;
      const mix = (s, d) => { const t = s * coef1 + d * coef2 + (0x80 << 7); return ((t >> 8) + t) >> 8 >> 7; };
      R = mix(R, background[0]); G = mix(G, background[1]); B = mix(B, background[2]);
    }
    r[i] = R; g[i] = G; b[i] = B;
  }
  if (channels === 3) { const out = new Uint8Array(3 * n); out.set(r, 0); out.set(g, n); out.set(b, 2 * n); return out; }
  const l = new Uint8Array(n);
  for (let i = 0; i < n; i++) l[i] = (r[i] * 19595 + g[i] * 38470 + b[i] * 7471 + 0x8000) >>> 16;
  return l;
}

// uint8 planar (C, H, W) -> float32 (x / 255 - mean) / std, each step rounded to float32 as numpy does.
export function normalize(u8, channels, mean, std) {
  const n = u8.length / channels, out = new Float32Array(u8.length);
  for (let c = 0; c < channels; c++) {
    const m = Math.fround(mean[c]), s = Math.fround(std[c]);
    for (let i = 0; i < n; i++) out[c * n + i] = Math.fround(Math.fround(u8[c * n + i] / 255) - m) / s;
  }
  return out;
}

// Width and height from the file's header, before decoding (so a decompression bomb is refused unread):
// PNG, JPEG, GIF, BMP, WebP; null for others (then the decoded size is checked).
export function headerSize(bytes) {
  const u = bytes, dv = new DataView(u.buffer, u.byteOffset, u.byteLength);
  if (u.length >= 24 && u[0] === 0x89 && u[1] === 0x50) return [dv.getUint32(16), dv.getUint32(20)];
  if (u.length >= 10 && u[0] === 0x47 && u[1] === 0x49) return [dv.getUint16(6, true), dv.getUint16(8, true)];
  if (u.length >= 26 && u[0] === 0x42 && u[1] === 0x4d) return [Math.abs(dv.getInt32(18, true)), Math.abs(dv.getInt32(22, true))];
  if (u.length >= 30 && dv.getUint32(0) === 0x52494646 && dv.getUint32(8) === 0x57454250) {
    const kind = String.fromCharCode(u[12], u[13], u[14], u[15]);
    if (kind === "VP8X") return [1 + (u[24] | u[25] << 8 | u[26] << 16), 1 + (u[27] | u[28] << 8 | u[29] << 16)];
    if (kind === "VP8L") { const b = dv.getUint32(21, true); return [1 + (b & 0x3fff), 1 + ((b >> 14) & 0x3fff)]; }
    if (kind === "VP8 ") return [dv.getUint16(26, true) & 0x3fff, dv.getUint16(28, true) & 0x3fff];
  }
  if (u.length >= 4 && u[0] === 0xff && u[1] === 0xd8) {
    let i = 2;
    while (i + 9 < u.length) {
      if (u[i] !== 0xff) { i++; continue; }
      const m = u[i + 1];
      if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) return [dv.getUint16(i + 7), dv.getUint16(i + 5)];
      if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7) || m === 0xff) { i += m === 0xff ? 1 : 2; continue; }
      i += 2 + dv.getUint16(i + 2);
    }
  }
  return null;
}

// The decoded RGBA pixels of an image file's bytes: EXIF orientation applied, colour profile ignored.
export async function decodeBytes(bytes, type, maxPixels) {
  const hs = headerSize(bytes);
  if (hs && hs[0] * hs[1] > maxPixels) throw new Error(`image of ${hs[0]}x${hs[1]} pixels is over the limit of ${maxPixels} pixels; use a smaller image`);
  let bmp;
  try {
    bmp = await createImageBitmap(new Blob([bytes], { type: type || "" }),
      { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch (e) {
    throw new Error("not an image the browser can decode (PNG, JPEG, GIF, BMP, WebP); pick an image file");
  }
  return bitmapPixels(bmp, maxPixels);
}

export function bitmapPixels(source, maxPixels) {
  const w = source.width, h = source.height;
  if (!w || !h) throw new Error("empty image (0 pixels); pick another image");
  if (w * h > maxPixels) throw new Error(`image of ${w}x${h} pixels is over the limit of ${maxPixels} pixels; use a smaller image`);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
  ctx.drawImage(source, 0, 0);
  return { data: ctx.getImageData(0, 0, w, h, { colorSpace: "srgb" }).data, width: w, height: h };
}

// RGBA pixels -> the model's float32 (C, H, W) input and the 8-bit resized image.
export function toTensor(pixels, spec) {
  const [C, H, W] = spec.input_size;
  const planar = toModelMode(pixels.data, pixels.width * pixels.height, C, spec.background || [0, 0, 0]);
  const resized = resize8(planar, C, pixels.height, pixels.width, H, W, (spec.resize || {}).vertical_first_rule !== false);
  return { tensor: normalize(resized, C, spec.mean, spec.std), uint8: resized };
}
