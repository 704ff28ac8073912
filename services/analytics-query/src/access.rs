//! Who may read what (DESIGN.md, Security): a student reads only their own learner; an
//! instructor reads the learners of their courses (the token's `courses` claim, or every course
//! when the claim is absent); a service reads everything. The same rules hold over gRPC, HTTP and
//! the Keen endpoint; Keen queries are narrowed by implicit filters instead ([`Caller::scope`]).

use learntrail_runtime::auth::{self, Role, Verifier};

use crate::{keys, store::Store};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub role: Role,
    /// The token's courses; `None` = every course (an instructor's), or the courses of the
    /// student's own events.
    pub courses: Option<Vec<String>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No valid token: 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the right: 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
}

/// Checks a token given as `Bearer <jwt>`, or raw (`<jwt>`, as Keen's clients send their key).
pub fn authenticate(verifier: &Verifier, credential: Option<&str>) -> Result<Caller, Denied> {
    let credential = credential.map(str::trim).filter(|c| !c.is_empty());
    let token = match credential {
        None => {
            return Err(Denied::Unauthenticated(
                auth::AuthError::Missing.to_string(),
            ));
        }
        Some(text) => match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => text,
        },
    };
    let claims = verifier
        .verify(token, auth::now())
        .map_err(|e| Denied::Unauthenticated(e.to_string()))?;
    Ok(Caller {
        sub: claims.sub,
        role: claims.role,
        courses: claims.courses,
    })
}

impl Caller {
    /// May this caller read `learner`? Instructors limited to courses are checked against the
    /// courses the learner's events named.
    pub async fn may_read_learner(&self, store: &Store, learner: &str) -> Result<(), Denied> {
        match (self.role, &self.courses) {
            (Role::Service, _) | (Role::Instructor, None) => Ok(()),
            (Role::Student, _) if self.sub == learner => Ok(()),
            (Role::Student, _) => Err(Denied::Forbidden(
                "a student token reads only its own learner".into(),
            )),
            (Role::Instructor, Some(courses)) => {
                let mut conn = store.clone();
                let theirs: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(format!("{}:crs", keys::learner(learner)))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if theirs.iter().any(|c| courses.contains(c)) {
                    Ok(())
                } else {
                    Err(Denied::Forbidden(
                        "this learner is in none of the token's courses".into(),
                    ))
                }
            }
        }
    }

    /// May this caller compare `learner` (whom it may read) with the cohort of `course`? A
    /// cohort's deciles are its members' values (in a cohort of one, that member's exact
    /// value): a student compares only within a course of their own, an instructor limited to
    /// courses only within those.
    pub async fn may_compare_in(
        &self,
        store: &Store,
        learner: &str,
        course: &str,
    ) -> Result<(), Denied> {
        match self.role {
            Role::Service => Ok(()),
            Role::Instructor => self.may_read_course(course),
            // a student token naming its courses compares only within them, whatever its
            // events named before
            Role::Student if !self.has_course(course) => Err(Denied::Forbidden(
                "this course is not one of the token's courses".into(),
            )),
            Role::Student => {
                let mut conn = store.clone();
                let member: bool = redis::cmd("SISMEMBER")
                    .arg(format!("{}:crs", keys::learner(learner)))
                    .arg(course)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(false);
                if member {
                    Ok(())
                } else {
                    Err(Denied::Forbidden(
                        "a student compares only within a course of their own".into(),
                    ))
                }
            }
        }
    }

    /// Whether `course` is among the token's courses (every course without the claim).
    fn has_course(&self, course: &str) -> bool {
        self.courses
            .as_ref()
            .is_none_or(|mine| mine.iter().any(|c| c == course))
    }

    /// May this caller read the whole of `course` (its cohort table)?
    pub fn may_read_course(&self, course: &str) -> Result<(), Denied> {
        match self.role {
            Role::Service => Ok(()),
            Role::Instructor if self.has_course(course) => Ok(()),
            Role::Instructor => Err(Denied::Forbidden(
                "this course is not one of the token's courses".into(),
            )),
            Role::Student => Err(Denied::Forbidden(
                "a student token reads only its own learner".into(),
            )),
        }
    }

    /// Implicit Keen filters: a student sees only their own events (`actor eq sub`), an
    /// instructor limited to courses only those courses (`context.course in courses`).
    pub fn scope(&self) -> Vec<crate::keen::query::Filter> {
        use crate::keen::query::{Filter, Operator};
        match (self.role, &self.courses) {
            (Role::Student, _) => vec![Filter {
                property: crate::index::ACTOR.into(),
                operator: Operator::Eq,
                value: serde_json::Value::String(self.sub.clone()),
            }],
            (Role::Instructor, Some(courses)) => vec![Filter {
                property: "context.course".into(),
                operator: Operator::In,
                value: serde_json::json!(courses),
            }],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use learntrail_runtime::auth::{Claims, sign};

    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-reasonable-length";

    #[test]
    fn tokens_come_raw_or_as_bearer_and_carry_courses() {
        let verifier = Verifier::new(SECRET);
        let claims = Claims {
            sub: "t1".into(),
            role: Role::Instructor,
            exp: Some(auth::now() + 60),
            nbf: None,
            iat: None,
            courses: None,
        };
        let plain = sign(SECRET, &claims);
        let mut with_courses = serde_json::to_value(&claims).unwrap();
        with_courses["courses"] = serde_json::json!(["c1"]);
        let scoped = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &with_courses,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let caller = authenticate(&verifier, Some(&plain)).unwrap();
        assert_eq!(caller.courses, None);
        let caller = authenticate(&verifier, Some(&format!("Bearer {scoped}"))).unwrap();
        assert_eq!(caller.courses, Some(vec!["c1".to_string()]));
        assert!(caller.may_read_course("c1").is_ok());
        assert!(matches!(
            caller.may_read_course("c2"),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            authenticate(&verifier, None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            authenticate(&verifier, Some("Bearer nope")),
            Err(Denied::Unauthenticated(_))
        ));
    }
}
