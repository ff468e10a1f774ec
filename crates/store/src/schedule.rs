//! Send windows: a campaign may send only between two local times of day in
//! an IANA time zone (`09:00-17:00 Europe/Paris`), so a list gets mail in
//! office hours wherever the senders run. Daylight-saving changes are the
//! time zone database's business (jiff, with a bundled copy of it).

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};

/// A daily window, parsed from `HH:MM-HH:MM ZONE`. A window whose end is
/// before its start crosses midnight (`22:00-06:00`).
#[derive(Debug, Clone)]
pub struct SendWindow {
    start: Time,
    end: Time,
    zone: TimeZone,
    text: String,
}

impl PartialEq for SendWindow {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl SendWindow {
    /// Parses `HH:MM-HH:MM ZONE`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (times, zone) =
            text.split_once(' ').ok_or("expected HH:MM-HH:MM ZONE, e.g. \"09:00-17:00 Europe/Paris\"")?;
        let (start, end) = times.split_once('-').ok_or("expected two times joined by '-', e.g. 09:00-17:00")?;
        let time = |value: &str| {
            Time::strptime("%H:%M", value).map_err(|_| format!("{value:?} is not a time of day (HH:MM, 24-hour)"))
        };
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err("the window is empty: start and end are the same time".into());
        }
        let zone = TimeZone::get(zone.trim()).map_err(|_| {
            format!("{:?} is not an IANA time zone (e.g. Europe/Paris, America/New_York, UTC)", zone.trim())
        })?;
        Ok(Self { start, end, zone, text: text.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn contains_time(&self, time: Time) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }

    /// Whether `at` (Unix milliseconds) falls inside the window.
    pub fn contains(&self, at_millis: i64) -> bool {
        Timestamp::from_millisecond(at_millis)
            .map(|t| self.contains_time(t.to_zoned_datetime(self.zone.clone()).time()))
            .unwrap_or(true)
    }

    /// The next opening at or after `at` (Unix milliseconds): `at` itself
    /// when inside the window.
    pub fn next_open(&self, at_millis: i64) -> i64 {
        if self.contains(at_millis) {
            return at_millis;
        }
        let Ok(now) = Timestamp::from_millisecond(at_millis) else { return at_millis };
        let local: ZonedDateTime = now.to_zoned_datetime(self.zone.clone());
        // Today's opening if it is still ahead, otherwise tomorrow's.
        for days in 0..=2 {
            let Ok(date) = local.date().checked_add(days.days()) else { continue };
            let Ok(open) = date.to_datetime(self.start).to_zoned_datetime(self.zone.clone()) else { continue };
            let millis = open.timestamp().as_millisecond();
            if millis > at_millis {
                return millis;
            }
        }
        at_millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn office_hours_in_a_zone() {
        let window = SendWindow::parse("09:00-17:00 Europe/Paris").unwrap();
        // 2026-11-28 is winter time: Paris is UTC+1.
        assert!(window.contains(millis("2026-11-28T08:30:00Z")), "09:30 in Paris");
        assert!(!window.contains(millis("2026-11-28T16:30:00Z")), "17:30 in Paris");
        assert_eq!(window.next_open(millis("2026-11-28T16:30:00Z")), millis("2026-11-29T08:00:00Z"));
        assert_eq!(window.next_open(millis("2026-11-28T07:00:00Z")), millis("2026-11-28T08:00:00Z"));
        let inside = millis("2026-11-28T10:00:00Z");
        assert_eq!(window.next_open(inside), inside);
        // Summer time: UTC+2.
        assert_eq!(window.next_open(millis("2026-07-01T05:00:00Z")), millis("2026-07-01T07:00:00Z"));
    }

    #[test]
    fn windows_may_cross_midnight() {
        let window = SendWindow::parse("22:00-06:00 UTC").unwrap();
        assert!(window.contains(millis("2026-11-28T23:00:00Z")));
        assert!(window.contains(millis("2026-11-28T05:59:00Z")));
        assert!(!window.contains(millis("2026-11-28T12:00:00Z")));
        assert_eq!(window.next_open(millis("2026-11-28T12:00:00Z")), millis("2026-11-28T22:00:00Z"));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        assert!(SendWindow::parse("9-5").unwrap_err().contains("HH:MM-HH:MM ZONE"));
        assert!(SendWindow::parse("09:00-25:00 UTC").unwrap_err().contains("25:00"));
        assert!(SendWindow::parse("09:00-17:00 Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(SendWindow::parse("09:00-09:00 UTC").unwrap_err().contains("empty"));
    }
}
