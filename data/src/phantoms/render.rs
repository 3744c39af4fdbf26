//! Drawing one full-spine radiograph phantom. Anatomy (vertebrae with pedicles along a
//! scoliotic curve, ribs, clavicles, pelvis, soft tissue) is shared by all classes; what
//! tells classes apart is the view and the hardware (brace shell, fusion rods and pedicle
//! screws, growing rods with few anchors and actuator housings, vertebral-body tether
//! screws with a cord). Nuisances (position, tilt, size, exposure, noise, collimation,
//! side markers, burned-in text) vary in every class alike.

use protocol::rng::SplitMix64;
use std::f32::consts::PI;

use super::canvas::{Canvas, PRINTABLE, Transform};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Ap,
    Lat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preop,
    PreopBrace,
    Fusion,
    GrowingRods,
    Tether,
}

/// What stays the same in every image of one synthetic patient.
#[derive(Debug, Clone)]
pub struct Patient {
    /// Body size (1 = average).
    pub size: f32,
    /// Pre-operative Cobb angle of the main curve, degrees.
    pub cobb: f32,
    /// +1: main curve convex to the patient's right.
    pub side: f32,
    /// A second (compensatory) curve below the main one.
    pub double: bool,
    /// Main curve's apex as a fraction of the thoracolumbar spine (0 = T1, 1 = L5).
    pub apex: f32,
    /// Thoracic kyphosis and lumbar lordosis amplitudes (lateral view).
    pub kyphosis: f32,
    pub lordosis: f32,
    /// How much surgery corrects the curve (0-1).
    pub correction: f32,
}

impl Patient {
    pub fn random(rng: &mut SplitMix64) -> Self {
        Self {
            size: rng.range(0.82, 1.12) as f32,
            cobb: rng.range(10.0, 80.0) as f32,
            side: if rng.chance(0.7) { 1.0 } else { -1.0 },
            double: rng.chance(0.4),
            apex: rng.range(0.3, 0.6) as f32,
            kyphosis: rng.range(0.02, 0.06) as f32,
            lordosis: rng.range(0.02, 0.06) as f32,
            correction: rng.range(0.3, 0.7) as f32,
        }
    }
}

/// Per-image acquisition settings.
#[derive(Debug, Clone)]
pub struct Shot {
    pub view: View,
    pub phase: Phase,
    pub seed: u64,
}

const LEVELS: usize = 17; // T1..L5

struct Spine {
    /// Centre of each vertebral body, its tilt (radians) and half-width/half-height.
    bodies: Vec<(f32, f32, f32, f32, f32)>,
}

/// Lateral displacement of the spine at t (0 = T1, 1 = L5) for a Cobb angle, in units of
/// the spine length: a half sine between end vertebrae has end tangents of atan(A*pi/L),
/// so A = L/pi * tan(cobb/2).
fn curve(t: f32, patient: &Patient, cobb: f32) -> f32 {
    let main = (cobb.to_radians() / 2.0).tan() / PI;
    let span = 0.55;
    let start = (patient.apex - span / 2.0).clamp(0.0, 1.0 - span);
    let u = ((t - start) / span).clamp(0.0, 1.0);
    let mut x = patient.side * main * (PI * u).sin() * 0.55;
    if patient.double {
        let below = ((t - (start + span * 0.8)) / 0.4).clamp(0.0, 1.0);
        x -= patient.side * main * 0.6 * (PI * below).sin() * 0.4;
    }
    x
}

fn spine(patient: &Patient, shot: &Shot, w: f32, h: f32, rng: &mut SplitMix64) -> Spine {
    let cobb = match shot.phase {
        Phase::Preop | Phase::PreopBrace => patient.cobb,
        Phase::Fusion => patient.cobb * (1.0 - patient.correction),
        Phase::GrowingRods => patient.cobb * (1.0 - 0.7 * patient.correction),
        Phase::Tether => patient.cobb * (1.0 - 0.6 * patient.correction),
    };
    let (top, bottom) = (0.1 * h, 0.8 * h);
    let length = bottom - top;
    let mut bodies = Vec::with_capacity(LEVELS);
    for k in 0..LEVELS {
        let t = k as f32 / (LEVELS - 1) as f32;
        let y = top + t * length;
        let (x, slope) = match shot.view {
            View::Ap => {
                let x = w / 2.0 + curve(t, patient, cobb) * length;
                let dt = 1e-3;
                let slope = (curve(t + dt, patient, cobb) - curve(t - dt, patient, cobb)) / (2.0 * dt);
                (x, slope)
            }
            View::Lat => {
                // Kyphosis (convex posterior, to the right of the image) above, lordosis below.
                let sag = patient.kyphosis * (PI * (t / 0.7).min(1.0)).sin()
                    - patient.lordosis * (PI * ((t - 0.65) / 0.35).clamp(0.0, 1.0)).sin();
                let x = w * 0.52 + sag * length;
                (x, 0.0)
            }
        };
        let angle = -(slope.atan()) + rng.normal() as f32 * 0.02;
        let half_w = match shot.view {
            View::Ap => w * (0.028 + 0.016 * t),
            View::Lat => w * (0.034 + 0.016 * t),
        };
        let half_h = length / LEVELS as f32 * 0.36 * (0.85 + 0.3 * t);
        bodies.push((x, y, angle, half_w, half_h));
    }
    Spine { bodies }
}

fn draw_anatomy(c: &mut Canvas, spine: &Spine, shot: &Shot, w: f32, h: f32, rng: &mut SplitMix64) {
    let mid = spine.bodies[LEVELS / 2].0;
    match shot.view {
        View::Ap => {
            // Soft tissue, then lungs as less dense fields.
            c.ellipse(w / 2.0, h * 0.52, w * 0.3, h * 0.5, 0.0, 0.22);
            for s in [-1.0, 1.0] {
                c.ellipse(w / 2.0 + s * w * 0.12, h * 0.3, w * 0.1, h * 0.2, s * 0.1, -0.08);
            }
            // Clavicles.
            for s in [-1.0f32, 1.0] {
                c.polyline(
                    &[(w / 2.0 + s * w * 0.03, h * 0.085), (w / 2.0 + s * w * 0.13, h * 0.075), (w / 2.0 + s * w * 0.24, h * 0.06)],
                    h * 0.006,
                    0.28,
                );
            }
            // Ribs from T1..T12.
            for k in 0..12 {
                let (x, y, _, hw, _) = spine.bodies[k];
                let reach = w * (0.12 + 0.1 * (k as f32 / 11.0).min(0.6) * 1.6).min(0.24);
                for s in [-1.0f32, 1.0] {
                    let pts: Vec<(f32, f32)> = (0..8)
                        .map(|i| {
                            let u = i as f32 / 7.0;
                            (x + s * (hw + u * reach), y - h * 0.005 + h * (0.05 * u - 0.02 * u * u) + h * 0.02 * u * u * u)
                        })
                        .collect();
                    c.polyline(&pts, h * 0.0045, 0.16);
                }
            }
            // Pelvis: iliac wings and sacrum below L5.
            let (lx, ly, _, _, lh) = spine.bodies[LEVELS - 1];
            for s in [-1.0f32, 1.0] {
                c.ellipse(lx + s * w * 0.13, ly + h * 0.08, w * 0.11, h * 0.075, s * 0.5, 0.2);
                c.ring(lx + s * w * 0.13, ly + h * 0.08, w * 0.11, h * 0.075, s * 0.5, w * 0.012, 0.12);
            }
            c.ellipse(lx, ly + lh + h * 0.05, w * 0.05, h * 0.05, 0.0, 0.24);
        }
        View::Lat => {
            c.ellipse(w / 2.0, h * 0.52, w * 0.24, h * 0.5, 0.0, 0.22);
            c.ellipse(w * 0.42, h * 0.3, w * 0.14, h * 0.18, 0.0, -0.07);
            // Left and right ribs overlap in profile: two slightly offset fans.
            for k in 1..12 {
                let (x, y, _, _, _) = spine.bodies[k];
                for offset in [0.0, w * 0.015] {
                    let pts: Vec<(f32, f32)> = (0..8)
                        .map(|i| {
                            let u = i as f32 / 7.0;
                            (x + w * 0.05 - u * w * 0.3 + offset, y - h * 0.01 + h * 0.06 * u + h * 0.015 * (PI * u).sin())
                        })
                        .collect();
                    c.polyline(&pts, h * 0.004, 0.1);
                }
            }
            // Sacrum and femoral heads in profile; no iliac wings.
            let (lx, ly, _, _, lh) = spine.bodies[LEVELS - 1];
            c.ellipse(lx + w * 0.02, ly + lh + h * 0.05, w * 0.04, h * 0.05, -0.4, 0.24);
            c.ellipse(lx - w * 0.07, ly + h * 0.13, w * 0.045, w * 0.045, 0.0, 0.22);
        }
    }
    // Vertebral bodies: cortical shell and endplates, pedicles (AP) or posterior elements (lat).
    let rotation_sign = if mid > w / 2.0 { -1.0 } else { 1.0 };
    for (k, &(x, y, a, hw, hh)) in spine.bodies.iter().enumerate() {
        c.rect(x, y, hw, hh, a, hw * 0.25, 0.28);
        c.rect(x, y, hw * 0.8, hh * 0.7, a, hw * 0.2, -0.07);
        match shot.view {
            View::Ap => {
                // Axial rotation moves both pedicles toward the concave side.
                let shift = rotation_sign * (x - w / 2.0).abs() / w * 0.8 * hw;
                for s in [-1.0f32, 1.0] {
                    let px = x + s * hw * 0.62 + shift;
                    let py = y - hh * 0.35;
                    c.ring(px, py, hw * 0.2, hh * 0.3, a, hw * 0.07, 0.18);
                }
                c.ellipse(x + shift * 0.5, y + hh * 0.2, hw * 0.12, hh * 0.35, a, 0.08);
            }
            View::Lat => {
                c.ellipse(x + hw * 1.45, y - hh * 0.2, hw * 0.35, hh * 0.35, 0.0, 0.12);
                c.polyline(&[(x + hw * 1.6, y), (x + hw * 2.4, y + hh * 0.8)], hh * 0.18, 0.1);
            }
        }
        let _ = (k, rng.next_u64());
    }
}

fn spine_path(spine: &Spine, from: usize, to: usize, offset: f32, w: f32) -> Vec<(f32, f32)> {
    spine.bodies[from..=to].iter().map(|&(x, y, a, _, _)| (x + offset * w * a.cos(), y + offset * w * a.sin())).collect()
}

fn draw_hardware(c: &mut Canvas, spine: &Spine, shot: &Shot, w: f32, h: f32, rng: &mut SplitMix64) {
    let metal = 1.1;
    match shot.phase {
        Phase::Preop => {}
        Phase::PreopBrace => {
            // Plastic shell (faint) around the trunk with straps and metal buckles.
            let (top, bottom) = (h * rng.range(0.32, 0.4) as f32, h * rng.range(0.78, 0.84) as f32);
            let half = match shot.view {
                View::Ap => w * 0.25,
                View::Lat => w * 0.2,
            };
            for s in [-1.0f32, 1.0] {
                let pts: Vec<(f32, f32)> = (0..6)
                    .map(|i| {
                        let u = i as f32 / 5.0;
                        (w / 2.0 + s * (half - w * 0.03 * (PI * u).sin()), top + u * (bottom - top))
                    })
                    .collect();
                c.polyline(&pts, w * 0.008, 0.14);
            }
            c.polyline(&[(w / 2.0 - half, top), (w / 2.0 + half, top - h * 0.01)], w * 0.006, 0.1);
            for i in 0..3 {
                let y = top + (bottom - top) * (0.25 + 0.25 * i as f32);
                c.polyline(&[(w / 2.0 - half, y), (w / 2.0 + half, y)], h * 0.006, 0.06);
                c.rect(w / 2.0 + half * 0.9, y, w * 0.012, h * 0.008, 0.0, 0.0, metal * 0.8);
            }
        }
        Phase::Fusion => {
            let from = 1 + rng.below(4);
            let to = (from + 8 + rng.below(5)).min(LEVELS - 1);
            match shot.view {
                View::Ap => {
                    for s in [-1.0f32, 1.0] {
                        c.polyline(&spine_path(spine, from, to, s * 0.032, w), w * 0.0055, metal);
                    }
                    for k in from..=to {
                        let (x, y, a, hw, hh) = spine.bodies[k];
                        for s in [-1.0f32, 1.0] {
                            let (px, py) = (x + s * hw * 0.62, y - hh * 0.3);
                            c.polyline(&[(px + s * hw * 0.15, py), (px - s * hw * 0.45, py + hh * 0.1)], hh * 0.14, metal);
                            c.ellipse(px + s * hw * 0.2, py, hw * 0.16, hh * 0.22, a, metal * 0.6);
                        }
                    }
                }
                View::Lat => {
                    c.polyline(&spine_path(spine, from, to, 0.065, w), w * 0.006, metal);
                    for k in from..=to {
                        let (x, y, _, hw, hh) = spine.bodies[k];
                        c.polyline(&[(x + hw * 1.7, y - hh * 0.1), (x - hw * 0.4, y + hh * 0.1)], hh * 0.13, metal * 0.9);
                    }
                }
            }
        }
        Phase::GrowingRods => {
            let from = rng.below(2);
            let to = LEVELS - 1 - rng.below(3);
            let anchors = [from, from + 1, to - 1, to];
            let housing_at = 0.35 + rng.range(0.0, 0.25) as f32;
            match shot.view {
                View::Ap => {
                    for s in [-1.0f32, 1.0] {
                        let path = spine_path(spine, from, to, s * 0.04, w);
                        c.polyline(&path, w * 0.0045, metal);
                        let i = ((path.len() - 1) as f32 * (housing_at + 0.08 * s)) as usize;
                        let (hx, hy) = path[i];
                        c.rect(hx, hy, w * 0.011, h * 0.045, 0.0, w * 0.004, metal * 0.7);
                    }
                    for &k in &anchors {
                        let (x, y, _, hw, hh) = spine.bodies[k];
                        for s in [-1.0f32, 1.0] {
                            c.polyline(&[(x + s * hw * 0.8, y - hh * 0.3), (x + s * hw * 0.2, y - hh * 0.2)], hh * 0.14, metal);
                        }
                    }
                }
                View::Lat => {
                    let path = spine_path(spine, from, to, 0.07, w);
                    c.polyline(&path, w * 0.005, metal);
                    let (hx, hy) = path[((path.len() - 1) as f32 * housing_at) as usize];
                    c.rect(hx, hy, w * 0.012, h * 0.045, 0.0, w * 0.004, metal * 0.8);
                    for &k in &anchors {
                        let (x, y, _, hw, hh) = spine.bodies[k];
                        c.polyline(&[(x + hw * 1.7, y), (x + hw * 0.2, y + hh * 0.1)], hh * 0.13, metal);
                    }
                }
            }
        }
        Phase::Tether => {
            // Screws in the vertebral bodies on the convex side of the main curve, joined by a cord.
            let apex = spine
                .bodies
                .iter()
                .enumerate()
                .max_by(|a, b| (a.1.0 - w / 2.0).abs().total_cmp(&(b.1.0 - w / 2.0).abs()))
                .map_or(8, |(i, _)| i);
            let convex = if spine.bodies[apex].0 >= w / 2.0 { 1.0 } else { -1.0 };
            let n = 5 + rng.below(4);
            let from = apex.saturating_sub(n / 2).min(LEVELS - n);
            let mut heads = Vec::new();
            for k in from..from + n {
                let (x, y, a, hw, hh) = spine.bodies[k];
                match shot.view {
                    View::Ap => {
                        let head = (x + convex * hw * 1.05, y);
                        c.polyline(&[head, (x - convex * hw * 0.3, y + hh * 0.05)], hh * 0.12, metal);
                        c.ellipse(head.0, head.1, hw * 0.2, hh * 0.3, a, metal * 0.7);
                        heads.push(head);
                    }
                    View::Lat => {
                        c.ellipse(x, y, hw * 0.22, hh * 0.28, 0.0, metal * 0.9);
                        heads.push((x, y));
                    }
                }
            }
            c.polyline(&heads, w * 0.003, 0.25);
        }
    }
}

/// Renders one image: values 0..1, bright = dense, `size` x `size` pixels.
pub fn render(patient: &Patient, shot: &Shot, size: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(shot.seed);
    let (w, h) = (size as f32, size as f32);
    let mut c = Canvas::new(size, size);
    let tilt = rng.range(-0.06, 0.06) as f32;
    let scale = patient.size * rng.range(0.92, 1.05) as f32;
    let shift = (rng.range(-0.06, 0.06) as f32 * w, rng.range(-0.04, 0.04) as f32 * h);
    c.set_transform(Transform::new(tilt, scale, (w / 2.0, h / 2.0), shift));
    let sp = spine(patient, shot, w, h, &mut rng);
    draw_anatomy(&mut c, &sp, shot, w, h, &mut rng);
    draw_hardware(&mut c, &sp, shot, w, h, &mut rng);
    c.set_transform(Transform::identity());

    // Exposure: Beer-Lambert, heel effect, quantum noise.
    let gain = rng.range(1.6, 3.0) as f32;
    let gamma = rng.range(0.8, 1.25) as f32;
    let noise = rng.range(0.008, 0.035) as f32;
    let heel = rng.range(0.0, 0.12) as f32;
    let mut noise_rng = rng.fork(1);
    for y in 0..size {
        let heel_y = 1.0 - heel * y as f32 / h;
        for x in 0..size {
            let i = y * size + x;
            let a = c.pixels[i].max(0.0);
            let v = (1.0 - (-gain * a).exp()).powf(gamma) * heel_y;
            c.pixels[i] = (v + noise * noise_rng.normal() as f32).clamp(0.0, 1.0);
        }
    }
    // Collimation (sometimes), a side marker and burned-in text, all class-independent.
    if rng.chance(0.5) {
        let m = |r: &mut SplitMix64| (r.range(0.0, 0.08) * w as f64) as usize;
        let (x0, y0, x1, y1) = (m(&mut rng), m(&mut rng), size - m(&mut rng), size - m(&mut rng));
        c.collimate(x0, y0, x1.max(x0 + 1), y1.max(y0 + 1), 0.0);
    }
    let cell = (w / 90.0).max(1.0);
    let marker = if rng.chance(0.5) { "L" } else { "R" };
    let (mx, my) = if rng.chance(0.5) { (w * 0.06, h * 0.05) } else { (w * 0.88, h * 0.05) };
    c.text(mx, my, cell * 1.6, marker, 0.9);
    if rng.chance(0.7) {
        let chars: Vec<char> = PRINTABLE.chars().collect();
        let len = 6 + rng.below(8);
        let text: String = (0..len).map(|_| chars[rng.below(chars.len())]).collect();
        let (tx, ty) = (w * rng.range(0.03, 0.4) as f32, h * if rng.chance(0.5) { 0.9 } else { 0.94 });
        c.rect(tx + len as f32 * cell * 3.0, ty + cell * 3.5, len as f32 * cell * 3.2, cell * 5.0, 0.0, 0.0, -1.0);
        c.text(tx, ty, cell, &text, 0.85);
    }
    for p in &mut c.pixels {
        *p = p.clamp(0.0, 1.0);
    }
    c.pixels
}
