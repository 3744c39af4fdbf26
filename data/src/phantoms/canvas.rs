//! A float raster of attenuation with the few primitives radiograph phantoms need:
//! filled and hollow ellipses, rotated rectangles, thick polylines and a small bitmap font.
//! Everything is additive, edges are anti-aliased over one pixel, and an affine transform
//! (patient position, scale and tilt) applies to every primitive.

#[derive(Debug, Clone, Copy)]
pub struct Transform {
    cos: f32,
    sin: f32,
    scale: f32,
    cx: f32,
    cy: f32,
    tx: f32,
    ty: f32,
}

impl Transform {
    pub fn identity() -> Self {
        Self { cos: 1.0, sin: 0.0, scale: 1.0, cx: 0.0, cy: 0.0, tx: 0.0, ty: 0.0 }
    }

    /// Rotates by `angle` (radians) and scales about (cx, cy), then translates.
    pub fn new(angle: f32, scale: f32, center: (f32, f32), shift: (f32, f32)) -> Self {
        Self { cos: angle.cos(), sin: angle.sin(), scale, cx: center.0, cy: center.1, tx: shift.0, ty: shift.1 }
    }

    fn point(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = ((x - self.cx) * self.scale, (y - self.cy) * self.scale);
        (self.cx + dx * self.cos - dy * self.sin + self.tx, self.cy + dx * self.sin + dy * self.cos + self.ty)
    }

    fn angle(&self) -> f32 {
        self.sin.atan2(self.cos)
    }
}

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
    transform: Transform,
}

fn coverage(distance_outside: f32) -> f32 {
    (0.5 - distance_outside).clamp(0.0, 1.0)
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self { width, height, pixels: vec![0.0; width * height], transform: Transform::identity() }
    }

    pub fn set_transform(&mut self, transform: Transform) {
        self.transform = transform;
    }

    /// Visits the pixels of a bounding box around (cx, cy) with half-extent `r`.
    fn for_box(&mut self, cx: f32, cy: f32, r: f32, mut f: impl FnMut(f32, f32) -> f32) {
        let x0 = ((cx - r - 1.0).floor().max(0.0)) as usize;
        let y0 = ((cy - r - 1.0).floor().max(0.0)) as usize;
        let x1 = ((cx + r + 2.0).ceil().max(0.0) as usize).min(self.width);
        let y1 = ((cy + r + 2.0).ceil().max(0.0) as usize).min(self.height);
        for y in y0..y1 {
            let row = y * self.width;
            for x in x0..x1 {
                let add = f(x as f32 + 0.5, y as f32 + 0.5);
                if add != 0.0 {
                    self.pixels[row + x] += add;
                }
            }
        }
    }

    /// A filled ellipse (semi-axes rx, ry, rotated by `angle`), adding `value`.
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, angle: f32, value: f32) {
        self.ring(cx, cy, rx, ry, angle, f32::INFINITY, value);
    }

    /// A hollow ellipse whose wall is `thickness` pixels (before scaling).
    #[allow(clippy::too_many_arguments)]
    pub fn ring(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, angle: f32, thickness: f32, value: f32) {
        let t = self.transform;
        let (cx, cy) = t.point(cx, cy);
        let (rx, ry, thickness) = (rx * t.scale, ry * t.scale, thickness * t.scale);
        if rx < 0.05 || ry < 0.05 {
            return;
        }
        let a = angle + t.angle();
        let (c, s) = (a.cos(), a.sin());
        let minor = rx.min(ry);
        self.for_box(cx, cy, rx.max(ry), |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
            let r = ((u / rx).powi(2) + (v / ry).powi(2)).sqrt();
            let outside = (r - 1.0) * minor;
            let inside = (1.0 - r) * minor - thickness;
            value * coverage(outside) * coverage(inside)
        });
    }

    /// A filled rectangle centred on (cx, cy) with half-sizes hw, hh, rotated by `angle`,
    /// corners rounded by `round` pixels.
    #[allow(clippy::too_many_arguments)]
    pub fn rect(&mut self, cx: f32, cy: f32, hw: f32, hh: f32, angle: f32, round: f32, value: f32) {
        let t = self.transform;
        let (cx, cy) = t.point(cx, cy);
        let (hw, hh, round) = (hw * t.scale, hh * t.scale, (round * t.scale).min(hw.min(hh) * t.scale));
        let a = angle + t.angle();
        let (c, s) = (a.cos(), a.sin());
        self.for_box(cx, cy, (hw * hw + hh * hh).sqrt(), |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            let (u, v) = ((dx * c + dy * s).abs(), (-dx * s + dy * c).abs());
            let (qx, qy) = (u - (hw - round), v - (hh - round));
            let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt() + qx.max(qy).min(0.0) - round;
            value * coverage(outside)
        });
    }

    /// A line of half-width `hw` through `points`, adding `value` once per pixel.
    pub fn polyline(&mut self, points: &[(f32, f32)], hw: f32, value: f32) {
        if points.len() < 2 {
            return;
        }
        let t = self.transform;
        let pts: Vec<(f32, f32)> = points.iter().map(|p| t.point(p.0, p.1)).collect();
        let hw = hw * t.scale;
        let (mut minx, mut miny, mut maxx, mut maxy) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in &pts {
            minx = minx.min(p.0);
            miny = miny.min(p.1);
            maxx = maxx.max(p.0);
            maxy = maxy.max(p.1);
        }
        let (cx, cy) = ((minx + maxx) / 2.0, (miny + maxy) / 2.0);
        let r = ((maxx - minx).max(maxy - miny)) / 2.0 + hw;
        self.for_box(cx, cy, r, |x, y| {
            if x < minx - hw - 1.0 || x > maxx + hw + 1.0 || y < miny - hw - 1.0 || y > maxy + hw + 1.0 {
                return 0.0;
            }
            let mut best = f32::MAX;
            for w in pts.windows(2) {
                let ((ax, ay), (bx, by)) = (w[0], w[1]);
                let (vx, vy) = (bx - ax, by - ay);
                let len2 = (vx * vx + vy * vy).max(1e-6);
                let k = (((x - ax) * vx + (y - ay) * vy) / len2).clamp(0.0, 1.0);
                let (px, py) = (ax + k * vx - x, ay + k * vy - y);
                best = best.min((px * px + py * py).sqrt());
            }
            value * coverage(best - hw)
        });
    }

    /// Text in a 5x7 bitmap font; `cell` is the pixel size of one font dot.
    pub fn text(&mut self, x: f32, y: f32, cell: f32, text: &str, value: f32) {
        for (i, ch) in text.chars().enumerate() {
            let Some(rows) = glyph(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let gx = x + (i as f32 * 6.0 + col as f32 + 0.5) * cell;
                        let gy = y + (r as f32 + 0.5) * cell;
                        self.rect(gx, gy, cell * 0.5, cell * 0.5, 0.0, 0.0, value);
                    }
                }
            }
        }
    }

    /// Sets every pixel outside the rectangle [x0, x1) x [y0, y1) to `value`.
    pub fn collimate(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, value: f32) {
        for y in 0..self.height {
            for x in 0..self.width {
                if x < x0 || x >= x1 || y < y0 || y >= y1 {
                    self.pixels[y * self.width + x] = value;
                }
            }
        }
    }
}

/// 5x7 glyphs for the characters phantoms print (side markers and burned-in text).
fn glyph(ch: char) -> Option<[u8; 7]> {
    Some(match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        _ => return None,
    })
}

/// Characters [`Canvas::text`] can draw.
pub const PRINTABLE: &str = "0123456789ACDEHKLMNPRSTVX-:/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipse_fills_its_inside_only() {
        let mut c = Canvas::new(20, 20);
        c.ellipse(10.0, 10.0, 5.0, 3.0, 0.0, 1.0);
        assert!((c.pixels[10 * 20 + 10] - 1.0).abs() < 1e-6);
        assert_eq!(c.pixels[10 * 20 + 17], 0.0);
        assert_eq!(c.pixels[2 * 20 + 10], 0.0);
    }

    #[test]
    fn transform_moves_primitives() {
        let mut c = Canvas::new(20, 20);
        c.set_transform(Transform::new(0.0, 1.0, (10.0, 10.0), (5.0, 0.0)));
        c.rect(5.0, 10.0, 1.0, 1.0, 0.0, 0.0, 1.0);
        assert!(c.pixels[10 * 20 + 10] > 0.9);
        assert_eq!(c.pixels[10 * 20 + 5], 0.0);
    }

    #[test]
    fn every_printable_character_has_a_glyph() {
        assert!(PRINTABLE.chars().all(|ch| glyph(ch).is_some()));
    }
}
